"""Per-class logit offsets, chosen on validation subjects to maximise mean Dice.

A network trained with cross-entropy on 135 classes of very different sizes draws the small ones
too small: at a boundary between a small structure and a large one, the argmax of calibrated
probabilities favours the large one, and a structure whose probability never wins anywhere is
never labelled at all. Mean Dice weighs every structure the same, so the labels that maximise it
are not the argmax of the probabilities. Adding a constant offset b_c to class c's logit moves
those decisions without touching anything the network learnt; a constant added to every voxel's
logit is a change of the output layer's bias (``fc3.bias``), so a model with offsets is an
ordinary model file and the engine is unchanged.

The offsets are fitted by coordinate ascent on the pooled Dice of validation voxels (never on a
benchmark's subjects): for one class at a time, try each step of a small grid and keep the best if
it raises the mean Dice over the classes present. Each trial only needs the voxels where that
class can win or lose, found from every voxel's two best scores. The fit scores the engine's raw
argmax pooled over its subjects; a benchmark scores per subject after the pipeline's cleanup, so
a gain here is a candidate to score there, not a result.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..inference import segment
from ..model.io import load_model, save_model
from .data import class_indices
from .validation import pooled_mean_dice

# Offsets only matter relative to one another, so class 0 (background) is the fixed reference.
# The grid leans positive: the classes that need an offset are mostly small ones drawn too small.
STEPS = (-1.0, -0.5, -0.25, 0.25, 0.5, 1.0, 2.0, 4.0)


def validation_scores(model, subjects, *, precision: str = "fp32", progress: bool = False):
    """Per subject: (log-probabilities [N, L] float32 of its brain voxels, their true class
    indices [N] int64), from the dense engine's softmax maps (``segment(return_probabilities=)``).
    The log of the softmax differs from the logits by one constant per voxel, so argmax and
    offsets act on it as on the logits."""
    values = list(model.config.output_values())
    out = []
    for s in subjects:
        image = np.asarray(s.image)
        brain = image != 0
        truth = torch.from_numpy(class_indices(np.asarray(s.labels)[brain], values))
        _, probs = segment(image, model, mask=brain, precision=precision, return_probabilities=values,
                           progress=progress)
        p = torch.empty(int(brain.sum()), len(values))
        for k in range(len(values)):  # one class at a time: no second copy of the whole maps
            p[:, k] = torch.from_numpy(np.asarray(probs[k])[brain])
        out.append((p.clamp_min_(1e-8).log_(), truth))
    return out


def _argmax_top2(x: torch.Tensor):
    """Best and second-best (value, class) per row, the best by argmax's own rule (lowest index
    on a tie), so that the kept labels are the ones the engine's argmax gives."""
    c1 = x.argmax(1)
    v1 = x.gather(1, c1[:, None])[:, 0]
    x = x.scatter(1, c1[:, None], float("-inf"))
    c2 = x.argmax(1)
    return v1, c1, x.gather(1, c2[:, None])[:, 0], c2


def fit_class_bias(scores, num_classes: int, *, steps=STEPS, sweeps: int = 2, min_gain: float = 1e-5,
                   log=None) -> torch.Tensor:
    """Offsets [L] (class 0, background, stays 0) that maximise the mean Dice over the classes
    present (pooled counts) of ``argmax(scores + offsets)`` against the truth; ``scores`` as
    :func:`validation_scores` returns them. Coordinate ascent, `sweeps` passes over the classes."""
    s = scores[0][0] if len(scores) == 1 else torch.cat([x for x, _ in scores])
    t = scores[0][1] if len(scores) == 1 else torch.cat([y for _, y in scores])
    s = s.float()
    L = num_classes
    if s.ndim != 2 or s.shape[1] != L or len(t) != len(s):
        raise ValueError(f"scores {tuple(s.shape)} and truth [{len(t)}] do not match {L} classes")
    if bool(torch.isnan(s).any()) or bool((s == float("inf")).any()):
        raise ValueError("scores hold NaN or +inf: they must be log-probabilities or logits")
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= L):
        raise ValueError(f"true classes must be class indices 0..{L - 1}")
    bias = torch.zeros(L)
    v1, c1, v2, c2 = _argmax_top2(s)
    true_total = torch.bincount(t, minlength=L).double()
    inter = torch.bincount(t[c1 == t], minlength=L).double()
    total = true_total + torch.bincount(c1, minlength=L).double()
    best = pooled_mean_dice(inter, total)

    def delta(o, n, tm):  # count changes when the voxels of truth `tm` go from labels `o` to `n`
        di = (torch.bincount(tm[n == tm], minlength=L) - torch.bincount(tm[o == tm], minlength=L)).double()
        return di, (torch.bincount(n, minlength=L) - torch.bincount(o, minlength=L)).double()

    for sweep in range(sweeps):
        changed = 0
        for c in range(1, L):
            sc = s[:, c] + bias[c]
            other_v = torch.where(c1 == c, v2, v1)
            other_c = torch.where(c1 == c, c2, c1)
            idx = ((sc + max(steps) >= other_v) | (c1 == c)).nonzero().flatten()
            if len(idx) == 0:
                continue
            old, tt, ov, oc = c1[idx], t[idx], other_v[idx], other_c[idx]
            trials = []
            for d in steps:
                x = s[idx, c] + (bias[c] + d)
                wins = (x > ov) | ((x == ov) & (c < oc))  # argmax's tie rule
                new = torch.where(wins, torch.full_like(old, c), oc)
                moved = new != old
                if bool(moved.any()):
                    di, dt = delta(old[moved], new[moved], tt[moved])
                    trials.append((pooled_mean_dice(inter + di, total + dt), d))
            if not trials:
                continue
            score, d = max(trials, key=lambda x: x[0])
            if score <= best + min_gain:
                continue
            # only voxels where c is (or becomes) one of the two best need their top two again; the
            # counts follow the labels as relabelled there, so they stay those of a fresh argmax
            r = (sc.maximum(s[:, c] + (bias[c] + d)) >= v2).nonzero().flatten()
            bias[c] += d
            changed += 1
            before = c1[r]
            v1[r], c1[r], v2[r], c2[r] = _argmax_top2(s[r] + bias)
            di, dt = delta(before, c1[r], t[r])
            inter, total = inter + di, total + dt
            best = pooled_mean_dice(inter, total)
        if log is not None:
            log(f"sweep {sweep + 1}: mean Dice {best:.6f}, {changed} offsets changed")
        if changed == 0:
            break
    return bias


def add_class_bias(model, bias):
    """Add `bias` [L] to `model`'s output logits (its output layer's bias), in place; returns it."""
    bias = torch.as_tensor(bias, dtype=model.fc3.bias.dtype)
    if bias.shape != model.fc3.bias.shape:
        raise ValueError(f"need one offset per class ({model.fc3.bias.shape[0]}); got {tuple(bias.shape)}")
    with torch.no_grad():
        model.fc3.bias.add_(bias)
    return model


def write_with_bias(src, out, bias) -> Path:
    """Write to `out` the model file `src` with `bias` added to its logits (recorded in its
    metadata as ``class_bias``, added to any earlier one)."""
    if Path(out).resolve() == Path(src).resolve():
        raise ValueError(f"the output {out} is the input: write the model to a new file")
    m = add_class_bias(load_model(src), bias)
    meta = dict(m.metadata)
    prev = np.asarray(meta.get("class_bias", np.zeros(len(bias))), dtype=float)
    meta["class_bias"] = [round(float(x), 6) for x in prev + np.asarray(bias, dtype=float)]
    return save_model(m, out, atlas=m.atlas, metadata=meta)
