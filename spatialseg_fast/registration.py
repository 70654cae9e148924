"""Affine registration of a skull-stripped T1 to the model's template (world coordinates, mm).

The paper's inputs were affinely registered to a reference atlas; we do the same with a small
torch optimiser instead of a registration toolkit dependency:

1. initialisation from moments: the brains' centres of mass and their spread along each RAS axis
   (a per-axis scale), which is robust to any starting position and size;
2. a 12-parameter affine map about the brains' centres, refined by Adam on the normalised
   cross-correlation of the two images (same T1 contrast), coarse to fine (4 mm, then 2 mm), both
   intensities scaled by their brain medians, computed over the template's dilated brain; each
   level stops once the transform moves the brain's box by < 0.05 mm over 10 iterations.

The result maps template world positions to subject world positions: sampling the subject there
gives the subject in template space, and its inverse maps labels back. :func:`register` also
returns the final similarity (NCC over the template's deep brain interior, 1 = identical up to
contrast; below LOW_SIMILARITY the registration probably failed) so that batch users can flag
failed registrations. Known motions come back to ~0.1 mm or better (bench/RESULTS.md, issue 17).
"""
from __future__ import annotations

from dataclasses import dataclass

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


LOW_SIMILARITY = 0.5
"""Below this final similarity the pipeline warns that the registration probably failed: T1 brains
score 0.75-1.0 (warped held-out subjects ~0.77, the templates themselves 0.99-1.0), a brain-shaped
noise image ~0.02 and a brain whose header is 90 degrees wrong ~0.09 (bench/RESULTS.md)."""


@dataclass
class Registration:
    transform: np.ndarray
    """4x4 map from template world mm to subject world mm."""
    similarity: float
    """Normalised cross-correlation of the two images at the finest level after alignment, over the
    template's brain interior (not its outline): bench/RESULTS.md (registration) has the values
    for T1 brains; a failed registration, or an image that is not a T1 brain, scores far lower."""


def register_affine(moving: Volume, fixed: Volume, *, levels=(4.0, 2.0), iterations=(200, 200)) -> np.ndarray:
    """4x4 map from `fixed` (template) world mm to `moving` (subject) world mm. Both skull-stripped
    (0 outside the brain). :func:`register` gives the final similarity too."""
    return register(moving, fixed, levels=levels, iterations=iterations).transform


def register(moving: Volume, fixed: Volume, *, levels=(4.0, 2.0), iterations=(200, 200),
             tolerance_mm: float = 0.05) -> Registration:
    """Affine registration of `moving` (subject) to `fixed` (template); see the module doc.

    Each level runs until the transform moves no point of the template's brain box by more than
    `tolerance_mm` over 10 iterations (at most `iterations` per level)."""
    mov = Volume(_normalised(np.asarray(moving.data, dtype=np.float32)), moving.affine)
    fix = Volume(_normalised(np.asarray(fixed.data, dtype=np.float32)), fixed.affine)
    c_m, s_m = _moments(np.asarray(mov.data), mov.affine)
    c_f, s_f = _moments(np.asarray(fix.data), fix.affine)
    # parameters: x_moving = (A0 + dA)(x_fixed - c_f) + c_m + 10 dt, i.e. about the brains' centres
    # (rotation and translation then barely interact, which the optimiser needs to converge)
    A0 = torch.as_tensor(np.diag(s_m / s_f))
    cf, cm = torch.as_tensor(c_f), torch.as_tensor(c_m)
    dA = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    dt = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    for step_mm, iters in zip(levels, iterations):
        f = _downsample(fix, step_mm)
        m = _downsample(mov, step_mm)
        fdata = torch.from_numpy(np.asarray(f.data, dtype=np.float32)).double()
        region = torch.from_numpy(_gaussian(fdata, [1.0, 1.0, 1.0]).numpy() > 0.05 * float(fdata.max()))
        pts = _world_grid(f.shape, f.affine)[region] - cf  # fixed world positions to compare, centred
        corners = torch.stack(torch.meshgrid(*[torch.stack([pts[:, a].min(), pts[:, a].max()]) for a in range(3)],
                                             indexing="ij"), -1).reshape(-1, 3)
        target = fdata[region]
        mdata = torch.from_numpy(np.asarray(m.data, dtype=np.float32)).double()[None, None]
        inv_m = torch.as_tensor(np.linalg.inv(m.affine))
        size = torch.tensor(m.shape, dtype=torch.float64)
        opt = _Adam([dA, dt], lr=0.01)
        last = None
        for it in range(iters):
            world = pts @ (A0 + dA).T + (cm + 10.0 * dt)
            vox = world @ inv_m[:3, :3].T + inv_m[:3, 3]
            g = (2 * vox / (size - 1) - 1).flip(-1).view(1, -1, 1, 1, 3)
            sampled = F.grid_sample(mdata, g, mode="bilinear", padding_mode="zeros", align_corners=True).view(-1)
            a, b = target - target.mean(), sampled - sampled.mean()
            ncc = (a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum() + 1e-12)
            (1.0 - ncc).backward()
            opt.step()
            if it % 10 == 9:
                with torch.no_grad():
                    now = corners @ (A0 + dA).T + 10.0 * dt
                    if last is not None and float((now - last).norm(dim=1).max()) < tolerance_mm:
                        break
                    last = now.clone()
    A = (A0 + dA).detach()
    out = np.eye(4)
    out[:3, :3] = A.numpy()
    out[:3, 3] = (cm + 10.0 * dt.detach() - A @ cf).numpy()
    return Registration(out, _interior_similarity(f, m, out))


class _Adam:
    """Adam (Kingma & Ba) for the two small parameter tensors. torch.optim.Adam would do the same,
    but constructing it imports torch._dynamo, ~3 s of a `spatialseg segment` run's registration."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = list(params), lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v):
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1**self.t))
            p.grad = None


def _interior_similarity(fixed: Volume, moving: Volume, transform: np.ndarray) -> float:
    """NCC of the two images over the template's brain interior (voxels brighter than half its
    median, more than 6 mm from the edge of that region). The optimised NCC also spans the brain's
    outline, which alone scores ~0.9 for any image with a brain-shaped mask, and so does the
    intensity fall-off near the outline; deeper inside only the anatomy agrees or not."""
    from scipy import ndimage

    fdata = np.asarray(fixed.data, dtype=np.float64)
    brain = fdata > 0.5 * np.median(fdata[fdata > 0]) if (fdata > 0).any() else fdata > 0  # not the blurred rim
    inside = ndimage.distance_transform_edt(brain, sampling=fixed.spacing) > 6.0
    if inside.sum() < 10:
        return float("nan")
    idx = np.argwhere(inside).astype(np.float64)
    world = idx @ fixed.affine[:3, :3].T + fixed.affine[:3, 3]
    world = world @ transform[:3, :3].T + transform[:3, 3]
    inv = np.linalg.inv(moving.affine)
    vox = world @ inv[:3, :3].T + inv[:3, 3]
    sampled = ndimage.map_coordinates(np.asarray(moving.data, dtype=np.float64), vox.T, order=1, mode="constant")
    a, b = fdata[inside] - fdata[inside].mean(), sampled - sampled.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


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
