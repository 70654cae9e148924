"""Validation Dice during training, on fixed slabs of the validation subjects.

Segmenting every validation subject whole after every epoch would cost minutes on a CPU; the
same network on a fixed set of evenly spaced slabs (the dense form, eval mode) gives the per-class
overlap counts of those voxels in seconds. Dice per class is pooled over all validation voxels
and averaged over the classes present (background excluded): a stable number for choosing the
best epoch. The final model is evaluated on whole volumes with the evaluator (bench/RESULTS.md).
"""
from __future__ import annotations

import math

import torch

from ..inference import cuda_scope
from .data import TrainSubject
from .dense import SlabStep


def slab_dice(model, subjects: list[TrainSubject], atlas=None, *, slabs: int = 6, slab: int = 2, precision: str = "fp32") -> float:
    """Mean Dice over the classes present, pooled over `slabs` evenly spaced slabs of `slab`
    slices per subject, on the model's device (subjects and atlas not already there are copied
    there for the call)."""
    L = model.num_classes
    dev = next(model.parameters()).device
    inter = torch.zeros(L, dtype=torch.float64, device=dev)
    total = torch.zeros(L, dtype=torch.float64, device=dev)
    if atlas is not None:
        atlas = atlas.to(dev)
    ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16" else torch.autocast(dev.type, enabled=False)
    was_training = model.training
    model.eval()
    try:
        with cuda_scope(dev, tf32=precision != "fp32"):  # fp32 as on the CPU (no TF32)
            for subject in subjects:
                if dev.type != "cpu":
                    subject = subject.to(dev)
                mask_p = subject.mask_p
                slices = mask_p.flatten(1).any(1).nonzero().flatten()
                lo, hi = int(slices.min()), int(slices.max()) + 1
                for k in range(slabs):
                    w0 = max(lo, lo + (hi - lo - slab) * (2 * k + 1) // (2 * slabs))
                    step = SlabStep(model, subject.source, mask_p, w0, w0 + slab, atlas=atlas)
                    if len(step) == 0:
                        continue
                    with ctx:
                        pred = step.logits().argmax(1)
                    xyz = step.xyz
                    truth = subject.target[xyz[:, 0], xyz[:, 1], xyz[:, 2]]
                    inter += torch.bincount(truth[pred == truth], minlength=L).double()
                    total += torch.bincount(truth, minlength=L).double() + torch.bincount(pred, minlength=L).double()
    finally:
        model.train(was_training)
    return pooled_mean_dice(inter.cpu(), total.cpu())


def pooled_mean_dice(inter: torch.Tensor, total: torch.Tensor) -> float:
    """Mean Dice over the classes present (class 0, background, left out) from pooled counts:
    per class, twice the true positives and the sum of the true and predicted voxel counts."""
    present = total[1:] > 0
    if not bool(present.any()):
        return math.nan
    return float((2 * inter[1:][present] / total[1:][present]).mean())
