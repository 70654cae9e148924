"""Per-class logit offsets (training/class_bias.py): fit on some validation subjects, score on others.

    python bench/class_bias.py [--model PATH] --fit 0,1 --check 2 [--steps=-0.5,-0.25,0.25,0.5,1]
                               [--sweeps 1] [--min-gain 1e-4] [--cache DIR] [--out OFFSETS.json]

Subjects: the wide stream's *validation* subjects (training/recipe.py WIDE_SEEDS["validation"]),
never a benchmark's. Each subject's engine softmax maps on its brain voxels are cached in --cache
(float16 log-probabilities, ~0.5 GB per subject; 5-10 min per subject on one thread to make).
Prints each subject's mean Dice over the structures present (raw engine labels, as the fit scores
them) without and with the offsets, and the offsets the fit agrees on. --out writes the offsets
(by label value) to JSON; ``training.class_bias.write_with_bias`` turns them into a model file.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from spatialseg_fast.datasets import load_source
from spatialseg_fast.model import load_default_model, load_model
from spatialseg_fast.training.class_bias import STEPS, fit_class_bias, validation_scores
from spatialseg_fast.training.recipe import WIDE_SEEDS
from spatialseg_fast.training.stream import wide_cohort
from spatialseg_fast.training.validation import pooled_mean_dice


def subject_dice(logp, truth, bias) -> float:
    L = logp.shape[1]
    pred = (logp.float() + bias).argmax(1)
    inter = torch.bincount(truth[pred == truth], minlength=L).double()
    return pooled_mean_dice(inter, torch.bincount(truth, minlength=L).double() + torch.bincount(pred, minlength=L).double())


def cached_scores(model, ids, cache: Path):
    """(log-probabilities, true classes) of the validation subjects `ids`, made once per cache."""
    missing = [i for i in ids if not (cache / f"val_scores_{i}.pt").is_file()]
    if missing:
        subjects = wide_cohort(load_source("cat12"), max(missing) + 1, WIDE_SEEDS["validation"])
        for i in missing:
            [(logp, truth)] = validation_scores(model, [subjects[i]], progress=True)
            torch.save({"logp": logp.half(), "truth": truth}, cache / f"val_scores_{i}.pt")
    for i in ids:
        d = torch.load(cache / f"val_scores_{i}.pt")
        yield d["logp"].float(), d["truth"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model file (default: the shipped weights)")
    parser.add_argument("--fit", required=True, help="validation subjects to fit on, e.g. 0,1")
    parser.add_argument("--check", default="", help="validation subjects to score only, e.g. 2")
    parser.add_argument("--steps", default=",".join(f"{x:g}" for x in STEPS), help="offset steps tried per class")
    parser.add_argument("--sweeps", type=int, default=2)
    parser.add_argument("--min-gain", type=float, default=1e-5)
    parser.add_argument("--cache", default="bench/.class_bias_cache", help="folder of cached validation scores")
    parser.add_argument("--out", help="write the offsets by label value to this JSON file")
    args = parser.parse_args(argv)
    ids = lambda text: [int(x) for x in text.split(",") if x.strip()]  # noqa: E731
    model = load_model(args.model) if args.model else load_default_model()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    fit = list(cached_scores(model, ids(args.fit), cache))
    bias = fit_class_bias(fit, model.num_classes, steps=tuple(float(x) for x in args.steps.split(",")),
                          sweeps=args.sweeps, min_gain=args.min_gain, log=print)
    values = model.config.output_values()
    names = model.config.label_table()
    moved = [(float(b), v) for b, v in zip(bias, values) if b != 0]
    print(f"{len(moved)} offsets, {min(moved)[0]:+g} to {max(moved)[0]:+g}" if moved else "no offsets")
    for b, v in sorted(moved, reverse=True)[:8]:
        print(f"  {b:+g}  {v} {names.get(v, '')}")
    for kind, subjects, id_list in (("fit", fit, ids(args.fit)), ("check", None, ids(args.check))):
        for i, (logp, truth) in zip(id_list, subjects or cached_scores(model, id_list, cache)):
            print(f"{kind} subject {i}: Dice {subject_dice(logp, truth, 0):.4f} -> {subject_dice(logp, truth, bias):.4f}",
                  flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({str(v): float(b) for v, b in zip(values, bias)}, indent=1))


if __name__ == "__main__":
    main()
