"""Triton kernel for landmark_distances: one program per block of points, G^3 lanes per point.

Coordinates of a box are generated in the kernel (the dense engine's slab mode), so only the
result is written to memory. Same landmark placement as the reference:
c_k = (k + 0.5) * n / G - 0.5 voxels along each axis.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _landmark_distances_kernel(
    coords_ptr, out_ptr, n_points,
    n0, n1, n2, sp0, sp1, sp2,
    b0, b1, b2, e1, e2,
    G: tl.constexpr, BOX: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr,
):
    pid = tl.program_id(0)
    p = (pid * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    pmask = p < n_points
    if BOX:
        x0 = (b0 + p // (e1 * e2)).to(tl.float32)
        x1 = (b1 + (p // e2) % e1).to(tl.float32)
        x2 = (b2 + p % e2).to(tl.float32)
    else:
        x0 = tl.load(coords_ptr + p * 3 + 0, mask=pmask, other=0.0)
        x1 = tl.load(coords_ptr + p * 3 + 1, mask=pmask, other=0.0)
        x2 = tl.load(coords_ptr + p * 3 + 2, mask=pmask, other=0.0)
    k = tl.arange(0, BLOCK_G)
    kmask = k < G * G * G
    k0 = (k // (G * G)).to(tl.float32)
    k1 = ((k // G) % G).to(tl.float32)
    k2 = (k % G).to(tl.float32)
    c0 = (k0 + 0.5) * n0 / G - 0.5
    c1 = (k1 + 0.5) * n1 / G - 0.5
    c2 = (k2 + 0.5) * n2 / G - 0.5
    d0 = (x0[:, None] - c0[None, :]) * sp0
    d1 = (x1[:, None] - c1[None, :]) * sp1
    d2 = (x2[:, None] - c2[None, :]) * sp2
    d = tl.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
    offs = p[:, None] * (G * G * G) + k[None, :]
    tl.store(out_ptr + offs, d, mask=pmask[:, None] & kmask[None, :])


def landmark_distances_triton(centres, box, shape, spacing, grid, out: torch.Tensor) -> None:
    """Distances into `out` [N, G, G, G] float32 (allocated by the dispatcher) for `centres`
    [N, 3], or, when centres is None, for every voxel of `box` ((start, stop),) * 3."""
    n = out.shape[0]
    if n == 0:
        return
    if box is not None:
        coords = out  # unused by the kernel in box mode
        start = [a for a, _ in box]
        e1, e2 = box[1][1] - box[1][0], box[2][1] - box[2][0]
    else:
        coords = centres.detach().to(torch.float32).contiguous()
        start, e1, e2 = [0, 0, 0], 1, 1
    block_g = triton.next_power_of_2(grid ** 3)
    block_p = max(1, min(16, 4096 // block_g))
    _landmark_distances_kernel[(triton.cdiv(n, block_p),)](
        coords, out, n,
        float(shape[0]), float(shape[1]), float(shape[2]),
        float(spacing[0]), float(spacing[1]), float(spacing[2]),
        start[0], start[1], start[2], e1, e2,
        G=grid, BOX=box is not None, BLOCK_P=block_p, BLOCK_G=block_g,
    )
