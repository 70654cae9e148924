"""Triton kernel for extract_patches: one launch, program (sample, part).

Part k < S cuts the 2D patch of scale k (bilinear, rotated/scaled, taps outside read fill),
part S the 3D patch, part S + 1 the landmark distances, part S + 2 the atlas vector. Reads the
same plane-major smoothed images as the C++ kernel (see PatchSource).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from spatialseg_fast.ops.extract_patches import Patches, PatchSource, rotation_terms


@triton.jit
def _extract_patches_kernel(
    scales_ptr, volume_ptr, atlas_ptr, centres_ptr, cos_ptr, sin_ptr, strides_ptr,
    planes_ptr, cube_ptr, dist_ptr, atlas_out_ptr,
    n0, n1, n2, sp0, sp1, sp2, fill, num_labels,
    SLICE_AXIS: tl.constexpr, S: tl.constexpr, P: tl.constexpr, Q: tl.constexpr, G: tl.constexpr,
    HAS_ATLAS: tl.constexpr, BLOCK_2D: tl.constexpr, BLOCK_3D: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_L: tl.constexpr,
):
    sample = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    c0 = tl.load(centres_ptr + sample * 3 + 0)
    c1 = tl.load(centres_ptr + sample * 3 + 1)
    c2 = tl.load(centres_ptr + sample * 3 + 2)

    if part < S:
        # In-plane axes u < v; scales are stored [S, n_w, n_u, n_v].
        if SLICE_AXIS == 0:
            cw, cu, cv, n_u, n_v = c0, c1, c2, n1, n2
        elif SLICE_AXIS == 1:
            cw, cu, cv, n_u, n_v = c1, c0, c2, n0, n2
        else:
            cw, cu, cv, n_u, n_v = c2, c0, c1, n0, n1
        stride = tl.load(strides_ptr + part).to(tl.float32)
        cos_f = tl.load(cos_ptr + sample)
        sin_f = tl.load(sin_ptr + sample)
        idx = tl.arange(0, BLOCK_2D)
        m = idx < P * P
        h = (P - 1) / 2.0
        a = ((idx // P).to(tl.float32) - h) * stride
        b = ((idx % P).to(tl.float32) - h) * stride
        ru = cos_f * a - sin_f * b
        rv = sin_f * a + cos_f * b
        fu = tl.floor(ru)
        fv = tl.floor(rv)
        wu = ru - fu
        wv = rv - fv
        u0 = cu + fu.to(tl.int64)
        v0 = cv + fv.to(tl.int64)
        plane = scales_ptr + (part * n0 * n1 * n2 + cw * n_u * n_v)
        in_u0 = (u0 >= 0) & (u0 < n_u)
        in_u1 = (u0 + 1 >= 0) & (u0 + 1 < n_u)
        in_v0 = (v0 >= 0) & (v0 < n_v)
        in_v1 = (v0 + 1 >= 0) & (v0 + 1 < n_v)
        t00 = tl.load(plane + u0 * n_v + v0, mask=m & in_u0 & in_v0, other=fill)
        t01 = tl.load(plane + u0 * n_v + v0 + 1, mask=m & in_u0 & in_v1, other=fill)
        t10 = tl.load(plane + (u0 + 1) * n_v + v0, mask=m & in_u1 & in_v0, other=fill)
        t11 = tl.load(plane + (u0 + 1) * n_v + v0 + 1, mask=m & in_u1 & in_v1, other=fill)
        top = t00 + wv * (t01 - t00)
        bot = t10 + wv * (t11 - t10)
        tl.store(planes_ptr + (sample * S + part) * (P * P) + idx, top + wu * (bot - top), mask=m)
    elif part == S:
        if Q > 0:
            idx = tl.arange(0, BLOCK_3D)
            m = idx < Q * Q * Q
            hq = (Q - 1) // 2
            x0 = c0 - hq + idx // (Q * Q)
            x1 = c1 - hq + (idx // Q) % Q
            x2 = c2 - hq + idx % Q
            inside = (x0 >= 0) & (x0 < n0) & (x1 >= 0) & (x1 < n1) & (x2 >= 0) & (x2 < n2)
            val = tl.load(volume_ptr + (x0 * n1 + x1) * n2 + x2, mask=m & inside, other=fill)
            tl.store(cube_ptr + sample * (Q * Q * Q) + idx, val, mask=m)
    elif part == S + 1:
        if G > 0:
            k = tl.arange(0, BLOCK_G)
            m = k < G * G * G
            l0 = ((k // (G * G)).to(tl.float32) + 0.5) * n0 / G - 0.5
            l1 = (((k // G) % G).to(tl.float32) + 0.5) * n1 / G - 0.5
            l2 = ((k % G).to(tl.float32) + 0.5) * n2 / G - 0.5
            d0 = (c0.to(tl.float32) - l0) * sp0
            d1 = (c1.to(tl.float32) - l1) * sp1
            d2 = (c2.to(tl.float32) - l2) * sp2
            tl.store(dist_ptr + sample * (G * G * G) + k, tl.sqrt(d0 * d0 + d1 * d1 + d2 * d2), mask=m)
    else:
        if HAS_ATLAS:
            base = ((c0 * n1 + c1) * n2 + c2) * num_labels
            for start in range(0, num_labels, BLOCK_L):
                j = start + tl.arange(0, BLOCK_L)
                m = j < num_labels
                val = tl.load(atlas_ptr + base + j, mask=m, other=0.0)
                tl.store(atlas_out_ptr + sample * num_labels + j, val, mask=m)


def extract_patches_triton(source: PatchSource, centres: torch.Tensor, rotation, scale, out: Patches) -> None:
    """Fused patch extraction on a float32 PatchSource into `out` (validated, allocated by the
    dispatcher); centres [N, 3] int64 on the source's device; rotation/scale [N] or None."""
    cfg = source.config
    dev = source.volume.device
    n = centres.shape[0]
    if n == 0:
        return
    P, Q, G, S = cfg.patch2d, cfg.patch3d, cfg.grid, cfg.num_scales
    L = 0 if source.atlas is None else source.atlas.shape[-1]
    planes, cube, distances, atlas = out
    cos_f, sin_f = (t.contiguous() for t in rotation_terms(rotation, scale, n, dev, torch.float32))
    strides = torch.tensor(cfg.strides, dtype=torch.int32, device=dev)
    dummy = planes  # stands in for absent optional pointers (never dereferenced)
    n0, n1, n2 = source.shape
    _extract_patches_kernel[(n, S + 3)](
        source.scales, source.volume, source.atlas if L else dummy, centres.contiguous(), cos_f, sin_f, strides,
        planes, cube if Q else dummy, distances if G else dummy, atlas if L else dummy,
        n0, n1, n2, *map(float, source.spacing), float(cfg.fill), L,
        SLICE_AXIS=cfg.slice_axis, S=S, P=P, Q=Q, G=G, HAS_ATLAS=bool(L),
        BLOCK_2D=triton.next_power_of_2(P * P), BLOCK_3D=triton.next_power_of_2(max(Q, 1) ** 3),
        BLOCK_G=triton.next_power_of_2(max(G, 1) ** 3), BLOCK_L=128,
    )
