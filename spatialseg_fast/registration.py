"""Affine registration of a skull-stripped T1 to the model's template (world coordinates, mm).

The paper's inputs were affinely registered to a reference atlas; we do the same with a small
torch optimiser instead of a registration toolkit dependency:

1. initialisation from moments: the brains' centres of mass and their spread along each RAS axis
   (a per-axis scale), which is robust to any starting position and size;
2. a 12-parameter affine map refined by gradient descent on the normalised cross-correlation of
   the two images (same T1 contrast), coarse to fine (4 mm, then 2 mm), both intensities scaled
   by their brain medians, computed over the template's dilated brain.

The result maps template world positions to subject world positions: sampling the subject there
gives the subject in template space, and its inverse maps labels back.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .volume import Volume, _gaussian


def _world_grid(shape, affine) -> torch.Tensor:
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"), -1)
    a = torch.as_tensor(affine, dtype=torch.float64)
    return idx @ a[:3, :3].T + a[:3, 3]


def _moments(data: np.ndarray, affine: np.ndarray):
    """(centre of mass in mm, spread (sd, mm) along each world axis) of the non-zero voxels."""
    idx = np.argwhere(data > 0).astype(np.float64)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return world.mean(0), world.std(0)


def _downsample(volume: Volume, step_mm: float) -> Volume:
    """The volume on a grid of `step_mm` voxels (anti-aliased), same world extent."""
    from .volume import resample

    spacing = np.array(volume.spacing)
    factor = np.maximum(step_mm / spacing, 1.0)
    shape = tuple(max(int(np.ceil(n / f)), 2) for n, f in zip(volume.shape, factor))
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, :3] * factor
    affine[:3, 3] = volume.affine[:3, 3] + volume.affine[:3, :3] @ ((factor - 1) / 2)
    return resample(volume, shape, affine)


def _normalised(data: np.ndarray) -> np.ndarray:
    inside = data[data > 0]
    return (data / np.median(inside)).astype(np.float32) if inside.size else data.astype(np.float32)


def register_affine(moving: Volume, fixed: Volume, *, levels=(4.0, 2.0), iterations=(120, 80)) -> np.ndarray:
    """4x4 map from `fixed` (template) world mm to `moving` (subject) world mm. Both skull-stripped
    (0 outside the brain)."""
    mov = Volume(_normalised(np.asarray(moving.data, dtype=np.float32)), moving.affine)
    fix = Volume(_normalised(np.asarray(fixed.data, dtype=np.float32)), fixed.affine)
    c_m, s_m = _moments(np.asarray(mov.data), mov.affine)
    c_f, s_f = _moments(np.asarray(fix.data), fix.affine)
    A0 = np.diag(s_m / s_f)
    t0 = c_m - A0 @ c_f
    # parameters: x_moving = (A0 + dA) x_fixed + (t0 + dt); dA, dt optimised (dt in units of 10 mm)
    dA = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    dt = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    A0_t, t0_t = torch.as_tensor(A0), torch.as_tensor(t0)
    for step_mm, iters in zip(levels, iterations):
        f = _downsample(fix, step_mm)
        m = _downsample(mov, step_mm)
        fdata = torch.from_numpy(np.asarray(f.data, dtype=np.float32)).double()
        region = torch.from_numpy(_gaussian(fdata, [1.0, 1.0, 1.0]).numpy() > 0.05 * float(fdata.max()))
        pts = _world_grid(f.shape, f.affine)[region]  # fixed world positions to compare
        target = fdata[region]
        mdata = torch.from_numpy(np.asarray(m.data, dtype=np.float32)).double()[None, None]
        inv_m = torch.as_tensor(np.linalg.inv(m.affine))
        size = torch.tensor(m.shape, dtype=torch.float64)
        opt = torch.optim.Adam([dA, dt], lr=0.01)
        for _ in range(iters):
            opt.zero_grad()
            world = pts @ (A0_t + dA).T + (t0_t + 10.0 * dt)
            vox = world @ inv_m[:3, :3].T + inv_m[:3, 3]
            g = (2 * vox / (size - 1) - 1).flip(-1).view(1, -1, 1, 1, 3)
            sampled = F.grid_sample(mdata, g, mode="bilinear", padding_mode="zeros", align_corners=True).view(-1)
            a, b = target - target.mean(), sampled - sampled.mean()
            ncc = (a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum() + 1e-12)
            (1.0 - ncc).backward()
            opt.step()
    out = np.eye(4)
    out[:3, :3] = (A0_t + dA).detach().numpy()
    out[:3, 3] = (t0_t + 10.0 * dt).detach().numpy()
    return out


def to_template(moving: Volume, shape, affine, transform: np.ndarray, kind: str = "intensity") -> Volume:
    """`moving` sampled on the template grid (shape, affine) through `transform` (template world ->
    subject world), as from :func:`register_affine`."""
    from .volume import resample

    # template voxel -> template world -> subject world: the resampling's target "affine" in the
    # subject's world is transform @ affine
    out = resample(moving, shape, transform @ affine, kind=kind)
    return Volume(out.data, affine)


def to_subject(template_volume: Volume, shape, affine, transform: np.ndarray, kind: str = "label") -> Volume:
    """A template-space volume mapped back onto the subject's grid (shape, affine)."""
    from .volume import resample

    moved = Volume(template_volume.data, transform @ template_volume.affine)
    out = resample(moved, shape, affine, kind=kind)
    return Volume(out.data, affine)
