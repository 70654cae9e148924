"""Triton path of surface_distances for CUDA tensors.

The border voxels of every label of both maps are found with shifted comparisons on the GPU
(one pass for all labels), grouped by label, and the kernel gives each border voxel its exact
distance to the nearest border voxel of the same label in the other map: one program per block
of query voxels of one label, scanning that label's target voxels in blocks. Distances are taken
from integer index differences times the spacing, in float64, so they equal the EDT's. Work is
quadratic in a label's border size, which a GPU handles for brain-sized labels; the CPU keeps the
separable EDT.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl


@triton.jit
def _surface_distances_kernel(
    q_ptr, t_ptr, out_ptr, table_ptr,
    sp0, sp1, sp2,
    BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # table row: query start, query stop, target start, target stop (int64)
    pid = tl.program_id(0)
    q_lo = tl.load(table_ptr + pid * 4 + 0)
    q_hi = tl.load(table_ptr + pid * 4 + 1)
    t_lo = tl.load(table_ptr + pid * 4 + 2)
    t_hi = tl.load(table_ptr + pid * 4 + 3)
    q = q_lo + tl.arange(0, BLOCK_Q).to(tl.int64)
    qmask = q < q_hi
    x0 = tl.load(q_ptr + q * 3 + 0, mask=qmask, other=0)
    x1 = tl.load(q_ptr + q * 3 + 1, mask=qmask, other=0)
    x2 = tl.load(q_ptr + q * 3 + 2, mask=qmask, other=0)
    best = tl.full((BLOCK_Q,), float("inf"), tl.float64)
    for start in range(t_lo, t_hi, BLOCK_T):
        t = start + tl.arange(0, BLOCK_T).to(tl.int64)
        tmask = t < t_hi
        y0 = tl.load(t_ptr + t * 3 + 0, mask=tmask, other=0)
        y1 = tl.load(t_ptr + t * 3 + 1, mask=tmask, other=0)
        y2 = tl.load(t_ptr + t * 3 + 2, mask=tmask, other=0)
        d0 = (x0[:, None] - y0[None, :]).to(tl.float64) * sp0
        d1 = (x1[:, None] - y1[None, :]).to(tl.float64) * sp1
        d2 = (x2[:, None] - y2[None, :]).to(tl.float64) * sp2
        d = d0 * d0 + d1 * d1 + d2 * d2
        d = tl.where(tmask[None, :], d, float("inf"))
        best = tl.minimum(best, tl.min(d, axis=1))
    tl.store(out_ptr + q, tl.sqrt(best), mask=qmask)


def border_points(ids: torch.Tensor, num_labels: int, connectivity: int, ndim: int):
    """(coords [n, 3] int64 of border voxels grouped by label in C order, counts per label).

    ids: [D, H, W] int64 on the device, -1 where not asked for; a 2D map is [1, H, W]."""
    D, H, W = ids.shape
    padded = torch.nn.functional.pad(ids, (1, 1, 1, 1, 1, 1), value=-2)
    border = torch.zeros_like(ids, dtype=torch.bool)
    for a in (-1, 0, 1):
        for b in (-1, 0, 1):
            for c in (-1, 0, 1):
                m = abs(a) + abs(b) + abs(c)
                if m == 0 or m > connectivity or (ndim == 2 and a != 0):
                    continue
                border |= padded[1 + a : 1 + a + D, 1 + b : 1 + b + H, 1 + c : 1 + c + W] != ids
    border &= ids >= 0
    coords = border.nonzero()
    labels = ids[border]
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_labels)
    return coords[order], counts


def surface_distances_triton(ref_ids: torch.Tensor, pred_ids: torch.Tensor, num_labels: int, spacing, connectivity: int, ndim: int):
    """(counts [L, 5] numpy, ref_to_pred list, pred_to_ref list) for id maps on a CUDA device."""
    dev = ref_ids.device
    L = num_labels
    keep_r, keep_p = ref_ids >= 0, pred_ids >= 0
    count_r = torch.bincount(ref_ids[keep_r], minlength=L)
    count_p = torch.bincount(pred_ids[keep_p], minlength=L)
    same = keep_r & (ref_ids == pred_ids)
    inter = torch.bincount(ref_ids[same], minlength=L)
    cr, nr = border_points(ref_ids, L, connectivity, ndim)
    cp, np_ = border_points(pred_ids, L, connectivity, ndim)
    counts = torch.stack([count_r, count_p, inter, nr, np_], 1).cpu().numpy()
    start_r = np.concatenate([[0], np.cumsum(counts[:, 3])])
    start_p = np.concatenate([[0], np.cumsum(counts[:, 4])])
    sp = [float(s) for s in spacing]

    def directed(q, q_start, t, t_start, n_q, n_t, BLOCK_Q=64, BLOCK_T=64):
        out = torch.empty(len(q), dtype=torch.float64, device=dev)
        rows = [(q_start[l] + s, min(q_start[l] + s + BLOCK_Q, q_start[l + 1]), t_start[l], t_start[l + 1])
                for l in range(L) if n_q[l] and n_t[l] for s in range(0, n_q[l], BLOCK_Q)]
        if rows:
            table = torch.tensor(rows, dtype=torch.int64, device=dev)
            _surface_distances_kernel[(len(rows),)](q.contiguous(), t.contiguous(), out, table, sp[0], sp[1], sp[2],
                                                    BLOCK_Q=BLOCK_Q, BLOCK_T=BLOCK_T)
        out = out.cpu().numpy()
        return [out[q_start[l] : q_start[l + 1]] if n_q[l] and n_t[l] else np.zeros(0) for l in range(L)]

    a = directed(cr, start_r, cp, start_p, counts[:, 3], counts[:, 4])
    b = directed(cp, start_p, cr, start_r, counts[:, 4], counts[:, 3])
    return counts, a, b
