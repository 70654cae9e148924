"""Distances from voxels to a G x G x G landmark grid laid evenly over the volume (paper §2.2).

Landmark k along an axis of n voxels sits at the centre of the k-th of G equal bins,
``c_k = (k + 0.5) * n / G - 0.5`` (voxel-index units); distances are Euclidean in millimetres,
``sqrt(sum_a ((x_a - c_{k_a}) * spacing_a) ** 2)``. The result for N points is [N, G, G, G]
(the paper's "seven 7x7 images" is ``.reshape(N, G, G * G)`` or a view as G channels of G x G).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .._backend import extension, resolve_backend, resolve_threads
from ._checks import check_centres, check_shape3, check_spacing

def landmark_positions(shape: Sequence[int], grid: int = 7, dtype=torch.float64, device=None) -> torch.Tensor:
    """[3, G] landmark coordinates (voxel units) along each axis of a volume of `shape`."""
    k = torch.arange(grid, dtype=dtype, device=device) + 0.5
    n = torch.tensor([float(s) for s in shape], dtype=dtype, device=device)
    return k[None, :] * n[:, None] / grid - 0.5


def landmark_distances_ref(centres: torch.Tensor, shape: Sequence[int], spacing=(1.0, 1.0, 1.0), grid: int = 7) -> torch.Tensor:
    """Plain-torch reference: [N, 3] positions (voxel units) -> [N, G, G, G] distances in mm.

    Computes in float64 when `centres` is float64, float32 otherwise.
    """
    dtype = torch.float64 if centres.dtype == torch.float64 else torch.float32
    x = centres.to(dtype)
    lm = landmark_positions(shape, grid, dtype=dtype, device=x.device)  # [3, G]
    sp = torch.tensor(spacing, dtype=dtype, device=x.device)
    sq = ((x[:, :, None] - lm[None]) * sp[None, :, None]) ** 2  # [N, 3, G]
    total = sq[:, 0, :, None, None] + sq[:, 1, None, :, None] + sq[:, 2, None, None, :]
    return total.sqrt()


def box_coordinates(bounds: Sequence[tuple[int, int]], device=None) -> torch.Tensor:
    """[N, 3] int64 coordinates of every voxel of the box [start, stop) per axis, in C order."""
    ranges = [torch.arange(a, b, device=device) for a, b in bounds]
    grids = torch.meshgrid(*ranges, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def _check_box(box, shape) -> tuple[tuple[int, int], ...]:
    if len(box) != 3 or not all(isinstance(s, slice) for s in box):
        raise ValueError(f"a box must be three slices, e.g. numpy.s_[0:10, :, 5:9]; got {box!r}")
    bounds = []
    for sl, n in zip(box, shape):
        start, stop, step = sl.indices(n)
        if step != 1:
            raise ValueError(f"box slices must have step 1; got {sl!r}")
        if stop <= start:
            raise ValueError(f"box slice {sl!r} selects no voxel of an axis of length {n}")
        bounds.append((start, stop))
    return tuple(bounds)


def landmark_distances(
    centres,
    shape: Sequence[int],
    spacing=None,
    grid: int = 7,
    *,
    backend: str = "auto",
    num_threads: int | None = None,
    device=None,
) -> torch.Tensor:
    """Distances (mm) from points to the G^3 landmark grid of a volume of `shape`: [N, G, G, G].

    centres: [N, 3] voxel coordinates (integer or real, inside the volume), or a box of three
        slices (``numpy.s_[z0:z1, :, :]``) meaning every voxel of that box in C order; the box
        mode generates coordinates inside the kernel (the dense engine's slab mode).
    spacing: voxel size in mm per axis (default 1 mm isotropic).
    backend: "auto" | "cpp" | "triton" | "torch". num_threads: C++ threads (None: torch's count).
    device: where a box's result is made (default CPU); a tensor's result follows the tensor.

    float32 result from the cpp/triton backends; the torch reference keeps float64 input in float64.
    """
    shape = check_shape3(shape)
    spacing = check_spacing(spacing)
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive integer; got {grid!r}")
    box = None
    if isinstance(centres, tuple) and centres and all(isinstance(s, slice) for s in centres):
        box = _check_box(centres, shape)
        dev = torch.device(device) if device is not None else torch.device("cpu")
    else:
        centres = check_centres(centres, shape, integer=False)
        dev = centres.device
    chosen = resolve_backend(backend, dev)

    if chosen == "torch":
        if box is not None:
            centres = box_coordinates(box, device=dev)
        return landmark_distances_ref(centres, shape, spacing, grid)

    n = math.prod(b - a for a, b in box) if box is not None else centres.shape[0]
    out = torch.empty((n, grid, grid, grid), dtype=torch.float32, device=dev)
    if chosen == "triton":
        from ..kernels.landmark_distances import landmark_distances_triton

        landmark_distances_triton(centres if box is None else None, box, shape, spacing, grid, out)
        return out

    ext = extension()
    threads = resolve_threads(num_threads)
    if box is not None:
        ext.landmark_distances_box([a for a, _ in box], [b for _, b in box], shape, spacing, grid, out.numpy(), threads)
    else:
        coords = centres.detach().to(torch.float64).contiguous()
        ext.landmark_distances(coords.numpy(), shape, spacing, grid, out.numpy(), threads)
    return out
