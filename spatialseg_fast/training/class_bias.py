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
class can win or lose, found from every voxel's two best scores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..model.io import load_model, save_model

STEPS = (-1.0, -0.5, -0.25, 0.25, 0.5, 1.0, 2.0, 4.0)


def validation_scores(model, subjects, *, precision: str = "fp32", progress: bool = False):
    """Per subject: (log-probabilities [N, L] float32 of its brain voxels, their true class
    indices [N] int64), from the dense engine's softmax maps (``segment(return_probabilities=)``).
    The log of the softmax differs from the logits by one constant per voxel, so argmax and
    offsets act on it as on the logits."""
    from ..inference import segment

    values = list(model.config.output_values())
    lut = np.full(max(values) + 1, -1, dtype=np.int64)
    lut[values] = np.arange(len(values))
    out = []
    for s in subjects:
        image = np.asarray(s.image)
        truth = np.asarray(s.labels)
        brain = image != 0
        _, probs = segment(image, model, mask=brain, precision=precision, return_probabilities=values,
                           progress=progress)
        p = torch.as_tensor(np.asarray(probs)[:, brain]).float().T.contiguous()  # [N, L]
        out.append((p.clamp_min_(1e-8).log_(), torch.from_numpy(lut[truth[brain]])))
    return out


def _dice(inter: torch.Tensor, total: torch.Tensor) -> float:
    present = total[1:] > 0
    return float((2 * inter[1:][present] / total[1:][present]).mean()) if bool(present.any()) else float("nan")


def fit_class_bias(scores, num_classes: int, *, steps=STEPS, sweeps: int = 2, min_gain: float = 1e-5,
                   log=None) -> torch.Tensor:
    """Offsets [L] (class 0, background, stays 0) that maximise the mean Dice over the classes
    present (pooled counts) of ``argmax(scores + offsets)`` against the truth; ``scores`` as
    :func:`validation_scores` returns them. Coordinate ascent, `sweeps` passes over the classes."""
    s = torch.cat([x for x, _ in scores]).float()
    t = torch.cat([y for _, y in scores])
    L = num_classes
    if s.shape[1] != L or len(t) != len(s):
        raise ValueError(f"scores [{tuple(s.shape)}] and truth [{len(t)}] do not match {L} classes")
    bias = torch.zeros(L)
    top = s.topk(2, dim=1)
    v1, c1 = top.values[:, 0].clone(), top.indices[:, 0].clone()
    v2, c2 = top.values[:, 1].clone(), top.indices[:, 1].clone()
    true_total = torch.bincount(t, minlength=L).double()

    def counts(pred):
        inter = torch.bincount(t[pred == t], minlength=L).double()
        return inter, true_total + torch.bincount(pred, minlength=L).double()

    inter, total = counts(c1)
    best = _dice(inter, total)
    for sweep in range(sweeps):
        changed = 0
        for c in range(1, L):
            sc = s[:, c] + bias[c]
            other_v = torch.where(c1 == c, v2, v1)
            other_c = torch.where(c1 == c, c2, c1)
            reach = sc + max(steps) >= other_v
            idx = (reach | (c1 == c)).nonzero().flatten()
            if len(idx) == 0:
                continue
            old = c1[idx]
            tt = t[idx]
            trials = []
            for d in steps:
                # the offset as it will be stored, so that a trial's argmax is bit for bit the argmax
                # of the scores with that offset (a tie broken otherwise would skew the kept counts)
                new = torch.where(s[idx, c] + (bias[c] + d) > other_v[idx], torch.full_like(old, c), other_c[idx])
                moved = new != old
                if not bool(moved.any()):
                    continue
                o, n, tm = old[moved], new[moved], tt[moved]
                di = (torch.bincount(tm[n == tm], minlength=L) - torch.bincount(tm[o == tm], minlength=L)).double()
                dt = (torch.bincount(n, minlength=L) - torch.bincount(o, minlength=L)).double()
                trials.append((_dice(inter + di, total + dt), d, di, dt))
            if not trials:
                continue
            score, d, di, dt = max(trials, key=lambda x: x[0])
            if score > best + min_gain:
                best, inter, total = score, inter + di, total + dt
                # only voxels where c is (or becomes) one of the two best need their top two again
                r = (sc.maximum(s[:, c] + (bias[c] + d)) >= v2).nonzero().flatten()
                bias[c] += d
                changed += 1
                top = (s[r] + bias).topk(2, dim=1)
                v1[r], c1[r] = top.values[:, 0], top.indices[:, 0]
                v2[r], c2[r] = top.values[:, 1], top.indices[:, 1]
        if log is not None:
            log(f"sweep {sweep + 1}: mean Dice {best:.4f}, {changed} offsets changed")
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
