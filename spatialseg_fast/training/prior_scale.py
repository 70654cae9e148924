"""Scale the weight a trained model gives its atlas prior (ProbBranch), chosen on validation data.

A model trained with position dropout saw the atlas on only 1 - p of its voxels (0.3 for the
image-first recipe), and at inference it sees it on every voxel. How much its prior logits should
weigh against the image pathways' is then a calibration question, like a softmax temperature, and
is answered the same way: on validation subjects. ProbBranch is three bias-free linear layers with
ReLU between them, so it is positively homogeneous: scaling its last layer by `factor` scales its
logits by `factor` for every atlas row, i.e. it is the same network fed ``factor * atlas``. So a
scaled model is an ordinary model file: no engine change, and ``factor = 0`` is the network with
its ProbBranch input dropped, as position dropout trained it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..model.io import load_model, save_model


def scale_prior(model, factor: float):
    """Scale `model`'s ProbBranch logits by `factor` (>= 0), in place; returns the model."""
    if model.prob is None:
        raise ValueError("this model has no ProbBranch: there is no prior to scale")
    factor = float(factor)
    if not factor >= 0:
        raise ValueError(f"the prior's scale must be >= 0; got {factor}")
    with torch.no_grad():
        model.prob.layers[-1].weight.mul_(factor)
    return model


def write_scaled(src, out, factor: float) -> Path:
    """Write to `out` the model file `src` with its prior scaled by `factor` (recorded in its
    metadata as ``prior_scale``, multiplied into any earlier one)."""
    if Path(out).resolve() == Path(src).resolve():
        raise ValueError(f"the output {out} is the input: write the scaled model to a new file")
    m = scale_prior(load_model(src), factor)
    meta = dict(m.metadata)
    meta["prior_scale"] = float(meta.get("prior_scale", 1.0)) * float(factor)
    return save_model(m, out, atlas=m.atlas, metadata=meta)
