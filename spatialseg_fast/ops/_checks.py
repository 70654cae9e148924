"""Input validation shared by the ops: every problem becomes a ValueError that says what is wrong."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_tensor(x, name: str) -> torch.Tensor:
    """A torch view of a tensor, numpy array or nested sequence (no copy when possible)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be numeric; got a numpy array of dtype {x.dtype}")
        if x.dtype.byteorder == ">" or not x.flags.writeable:
            x = np.array(x, dtype=x.dtype.newbyteorder("="))
        return torch.from_numpy(x)
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a tensor or array; got {type(x).__name__} ({exc})") from None


def check_float(t: torch.Tensor, name: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64); got {t.dtype}. "
            f"Convert it first, e.g. {name}.float()"
        )


def check_finite(t: torch.Tensor, name: str) -> None:
    # Block by block along the leading axis (a whole-tensor isfinite() of a 2 GB atlas would
    # allocate 1 GB more). A block is all finite iff its min and max are (NaN propagates through
    # both, -inf shows in the min, +inf in the max); aminmax is ~8x faster than isfinite().all().
    if t.numel() == 0 or not t.is_floating_point():
        return
    step = max(1, (1 << 24) // max(1, t[0].numel())) if t.ndim else 1
    for block in [t] if t.ndim == 0 else (t[i : i + step] for i in range(0, t.shape[0], step)):
        if not bool(torch.isfinite(torch.stack(torch.aminmax(block))).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")


def check_volume(t: torch.Tensor, name: str = "volume") -> None:
    if t.ndim != 3:
        raise ValueError(f"{name} must be 3D (D, H, W); got shape {tuple(t.shape)} ({t.ndim}D)")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    check_float(t, name)
    check_finite(t, name)


def check_atlas(atlas, shape, num_labels: int | None = None) -> torch.Tensor:
    """An [L, D, H, W] float, finite atlas on a volume of `shape` (with `num_labels` labels if given)."""
    atl = as_tensor(atlas, "atlas")
    L = "L" if num_labels is None else num_labels
    if atl.ndim != 4 or tuple(atl.shape[1:]) != tuple(shape):
        raise ValueError(f"atlas must have shape ({L}, {', '.join(map(str, shape))}) to match the volume; got {tuple(atl.shape)}")
    if atl.shape[0] == 0:
        raise ValueError("atlas has no labels (L = 0)")
    if num_labels is not None and atl.shape[0] != num_labels:
        raise ValueError(f"atlas has {atl.shape[0]} label channels but the model has num_classes={num_labels}")
    check_float(atl, "atlas")
    check_finite(atl, "atlas")
    return atl


def check_spacing(spacing, name: str = "spacing") -> tuple[float, float, float]:
    if spacing is None:
        return (1.0, 1.0, 1.0)
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.tolist()
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three positive numbers (mm); got {spacing!r}") from None
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"{name} must be three positive finite numbers (mm); got {spacing!r}")
    return values


def check_shape3(shape, name: str = "shape") -> tuple[int, int, int]:
    try:
        values = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three positive integers; got {shape!r}") from None
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"{name} must be three positive integers; got {shape!r}")
    return values


def check_centres(centres, shape: Sequence[int], *, integer: bool, name: str = "centres") -> torch.Tensor:
    """An [N, 3] tensor of positions inside a volume of `shape` (voxel units)."""
    t = as_tensor(centres, name)
    if t.ndim == 1 and t.numel() == 3:
        t = t.reshape(1, 3)
    if t.ndim != 2 or t.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3); got {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold voxel coordinates; got dtype {t.dtype}")
    if integer and t.is_floating_point():
        raise ValueError(f"{name} must be integer voxel indices; got dtype {t.dtype} (use .long())")
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    if t.numel():
        upper = torch.tensor(shape, device=t.device, dtype=t.dtype) - 1
        outside = ((t < 0) | (t > upper)).any(dim=1)
        if bool(outside.any()):
            i = int(outside.nonzero()[0, 0])
            raise ValueError(
                f"{name}[{i}] = {t[i].tolist()} lies outside the volume of shape {tuple(shape)} "
                f"({int(outside.sum())} centre(s) outside)"
            )
    return t


def check_per_sample(x, n: int, name: str, device, *, positive: bool = False) -> torch.Tensor | None:
    """None, a scalar (broadcast) or N values, as float32."""
    if x is None:
        return None
    t = as_tensor(x, name).to(device=device)
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must be real numbers; got dtype {t.dtype}")
    t = t.to(torch.float64)
    if t.ndim == 0:
        t = t.expand(n)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must be a scalar or have one value per centre ({n}); got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if positive and bool((t <= 0).any()):
        raise ValueError(f"{name} must be positive")
    return t
