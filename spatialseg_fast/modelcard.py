"""A model file's card as readable text: what it is, what it was trained on, how long, what it scores.

The card is read from the file's metadata: the training record that every checkpoint carries
(options, per-epoch history), the data description, and the ``card`` entry that
``export_default`` adds when a model is shipped (hardware, validation of the shipped file itself,
held-out figures).
"""
from __future__ import annotations

from pathlib import PurePath


def _fmt_seconds(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"


def card(path) -> dict:
    """{field: text} for a model file (ValueError for an unreadable file)."""
    from .model import read_config

    cfg, extra = read_config(path)
    training = extra.get("training") or {}
    options = training.get("options") or {}
    history = training.get("history") or []
    shipped = extra.get("card") or {}
    out = {"file": str(path),
           "network": "+".join(["basenet"] + [b for b, on in (("dist", cfg.dist), ("prob", cfg.prob), ("3d", cfg.cube)) if on])
           + f", {cfg.num_classes} classes"}
    if extra.get("data"):
        out["data"] = str(extra["data"])
    var = extra.get("variability")
    if var:
        out["variability"] = (f"multi-scale warps (mean {var['warp_mm'][0]:g}-{var['warp_mm'][1]:g} mm at "
                              f"{'/'.join(f'{s:g}' for s in var['warp_spacings_mm'])} mm), {100 * var['synth_prob']:.0f}% "
                              f"per-label synthetic contrasts, blur, {100 * var['thick_prob']:.0f}% thick slices, bias "
                              f"{var['bias']:g}, gamma sd {var['gamma_sd']:g}, noise {var['noise'][0]:g}-{var['noise'][1]:g}")
    if history:
        steps = len(history) * int(options.get("steps_per_epoch", 0))
        samples = sum(int(r.get("samples", 0)) for r in history)
        seconds = sum(float(r.get("seconds", 0.0)) for r in history)
        recipe = (f"{options.get('mode', '?')} mode, {options.get('optimizer', 'sgd')} lr {options.get('lr')}, "
                  f"{options.get('precision', 'fp32')}")
        if options.get("position_dropout"):
            recipe += f", position dropout {options['position_dropout']:g}"
        if options.get("sample_fraction", 1.0) < 1:
            recipe += f", sample fraction {options['sample_fraction']:g}"
        out["training"] = (f"{len(history)} epochs, {steps:,} steps, {samples / 1e6:.1f}M voxel samples, "
                           f"{_fmt_seconds(seconds)} of steps ({recipe})")
        best = training.get("best_dice")
        if isinstance(best, float):
            out["validation"] = f"best slab Dice {best:.3f} (epoch {int(training.get('best_epoch', -1)) + 1})"
            if extra.get("averaged_from"):
                out["validation"] = "the run's best single epoch: " + out["validation"]
    if extra.get("averaged_from"):
        names = [PurePath(str(p)).name for p in extra["averaged_from"]]
        shown = ", ".join(names) if len(names) <= 4 else f"{names[0]} ... {names[-1]}"
        out["averaged"] = f"the mean of the weights of {len(names)} checkpoints ({shown})"
    if extra.get("prior_scale") is not None and float(extra["prior_scale"]) != 1.0:
        out["prior scale"] = (f"ProbBranch logits x {float(extra['prior_scale']):g} after training "
                              "(chosen on validation subjects: training/prior_scale.py)")
    if extra.get("class_bias") is not None:
        b = [float(x) for x in extra["class_bias"]]
        moved = [x for x in b if x != 0]
        if moved:
            out["class offsets"] = (f"{len(moved)} of {len(b)} class logits offset after training ({min(moved):+g} to "
                                    f"{max(moved):+g}; chosen on validation subjects for mean Dice: training/class_bias.py)")
    if extra.get("init"):
        out["start"] = f"from the weights of {extra['init']}"
    if shipped.get("validation"):  # the shipped file's own validation read (e.g. of an average of epochs)
        out["validation"] = str(shipped["validation"])
    for key in ("hardware", "heldout", "test"):
        if shipped.get(key):
            out[key] = str(shipped[key])
    if extra.get("license"):
        out["license"] = str(extra["license"])
    return out


def card_text(path, indent: str = "  ") -> str:
    fields = card(path)
    width = max(len(k) for k in fields)
    return "\n".join(f"{indent}{k:<{width}}  {v}" for k, v in fields.items())
