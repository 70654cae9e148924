"""The wide training distribution: anatomy and image appearance that vary like real subjects'.

The paper-split cohort (cohort.py) warps the template by one smooth field at one scale and
changes its contrast mildly: ten such subjects taught the network to copy its atlas (issue 14).
Subjects drawn here differ from the template as real brains do after an affine registration:

- **Anatomy**: a sum of smooth random displacement fields at three control spacings (48, 24 and
  12 mm; variance shares 0.6 / 0.3 / 0.1: large shape changes dominate, finer ones bend gyri and
  ventricles), rescaled so the mean displacement inside the brain is drawn uniformly in
  ``warp_mm`` (3-5 mm). Measured over 20 subjects: the largest displacement is 3.5-4.5x the mean
  (about 12-20 mm), no folding (smallest Jacobian determinant > 0.5). A residual affine of
  an imperfect registration (<= 2 degrees, +-2% scale, <= 1.5 mm) is composed with it.
- **Image**: either the template's own T1 warped (probability ``1 - synth_prob``) or a
  SynthSeg-style image drawn per label from the warped label map: each structure's mean is the
  template's mean for it times a log-normal factor (sd ``label_jitter``), so structures change
  contrast against each other the way scanners and sequences change them while the image stays a
  T1, with a within-structure spread of 2-8% and partial volume from a Gaussian blur. On top of
  either: blur (sigma up to ``blur_vox``), thick slices with probability ``thick_prob`` (2-4 mm
  along one axis: another protocol's resolution), a multiplicative bias field (sd ``bias``),
  gamma (log-normal, sd ``gamma_sd``) and Rician noise (``noise`` of the peak).

Every draw comes from ``numpy.random.default_rng((seed, index))``: a subject depends only on the
seed and its index. Subjects are made on the template grid (as after affine registration), 0
outside the brain (skull-stripped), labels inside the brain mask only.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .cohort import _smooth_field, random_affine
from .templates import Subject


@dataclass(frozen=True)
class Variability:
    """The ranges of the wide distribution (see the module docstring for why each)."""

    warp_mm: tuple = (3.0, 4.5)
    warp_spacings_mm: tuple = (48.0, 24.0, 12.0)
    warp_shares: tuple = (0.7, 0.22, 0.08)
    warp_min_max_mm: float = 0.0
    """Scale the field up where needed so that its largest displacement in the brain is at least
    this (the held-out benchmark's 12 mm); 0: the mean alone sets the size."""
    residual_affine: bool = True
    synth_prob: float = 0.5
    label_jitter: float = 0.25
    within: tuple = (0.02, 0.08)
    blur_vox: float = 1.0
    thick_prob: float = 0.25
    bias: float = 0.2
    gamma_sd: float = 0.25
    noise: tuple = (0.005, 0.05)

    def as_dict(self) -> dict:
        return asdict(self)


HELDOUT = Variability(warp_mm=(3.0, 3.0), warp_min_max_mm=12.0, residual_affine=False, synth_prob=0.0, blur_vox=0.0,
                      thick_prob=0.0, bias=0.0, gamma_sd=0.0, noise=(0.0, 0.0))
"""The held-out benchmark's subjects: the wide deformation alone (mean 3 mm, or a little more where
that is needed for a largest displacement of 12 mm) and nothing else, so the scores measure
reading anatomy from the image, not robustness to intensity changes."""


def displacement_field(rng, shape, spacing, mask: torch.Tensor, v: Variability):
    """[3, D, H, W] displacement in voxels: the three-scale field rescaled to the drawn mean (mm)."""
    spacing_t = torch.tensor(spacing, dtype=torch.float32).view(3, 1, 1, 1)
    field = 0
    for spacing_mm, share in zip(v.warp_spacings_mm, v.warp_shares):
        field = field + _smooth_field(rng, shape, 3, spacing_mm / float(np.mean(spacing)), math.sqrt(share))
    target = float(rng.uniform(*v.warp_mm))
    norm = field.norm(dim=0)[mask]  # in mm: the field is drawn in mm
    scale = target / max(float(norm.mean()), 1e-6)
    if v.warp_min_max_mm > 0:
        scale = max(scale, v.warp_min_max_mm / max(float(norm.max()), 1e-6))
    return field * scale / spacing_t


def displacement_stats(disp_vox: torch.Tensor, spacing, mask: torch.Tensor) -> dict:
    """Mean and largest displacement (mm) inside `mask` and the smallest Jacobian determinant."""
    mm = disp_vox * torch.tensor(spacing, dtype=torch.float32).view(3, 1, 1, 1)
    norm = mm.norm(dim=0)[mask]
    grads = [torch.gradient(disp_vox[i], dim=(0, 1, 2)) for i in range(3)]
    jac = torch.stack([torch.stack(g, 0) for g in grads], 0) + torch.eye(3).view(3, 3, 1, 1, 1)
    det = torch.linalg.det(jac.permute(2, 3, 4, 0, 1))[mask]
    return {"mean_mm": float(norm.mean()), "max_mm": float(norm.max()), "min_jacobian": float(det.min())}


def _gaussian_blur(x: torch.Tensor, sigmas) -> torch.Tensor:
    """Separable Gaussian blur of a [D, H, W] tensor, sigma per axis in voxels (0: none)."""
    out = x[None, None]
    for axis, s in enumerate(sigmas):
        if s < 0.2:
            continue
        r = int(math.ceil(3 * s))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / s) ** 2)
        k = (k / k.sum()).view(1, 1, *[len(k) if a == axis else 1 for a in range(3)])
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        out = F.conv3d(F.pad(out, pad, mode="replicate"), k)
    return out[0, 0]


def label_means(base: Subject) -> np.ndarray:
    """Mean template intensity of each label value inside the brain (index = label value)."""
    mask = base.mask
    lab = base.labels[mask].astype(np.int64)
    sums = np.bincount(lab, weights=base.image[mask], minlength=256)
    counts = np.bincount(lab, minlength=256)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def synthesize(rng, labels: torch.Tensor, mask: torch.Tensor, means: np.ndarray, v: Variability) -> torch.Tensor:
    """A T1-like image drawn per label: jittered template means, within-label spread, blur."""
    factor = np.exp(rng.normal(0.0, v.label_jitter, len(means)))
    mu = torch.from_numpy((means * factor).astype(np.float32))
    sd = torch.from_numpy((means * factor * rng.uniform(*v.within, len(means))).astype(np.float32))
    lab = labels.long()
    noise = torch.from_numpy(rng.standard_normal(tuple(labels.shape)).astype(np.float32))
    image = (mu[lab] + sd[lab] * noise) * mask
    return _gaussian_blur(image, [float(rng.uniform(0.3, 1.0))] * 3)


def make_wide_subject(base: Subject, seed: int, index: int, v: Variability = Variability(), *,
                      means: np.ndarray | None = None, return_field: bool = False):
    """Subject `index` of `seed` from the wide distribution made from `base` (module docstring).
    return_field: also return the displacement field [3, D, H, W] in voxels."""
    rng = np.random.default_rng((int(seed), int(index)))
    shape = base.image.shape
    spacing = np.linalg.norm(base.affine[:3, :3], axis=0)
    mask0 = torch.from_numpy(base.mask)
    centre = np.argwhere(base.mask).mean(0)
    a = random_affine(rng, max_rotation=2.0, max_scale=0.02, max_shear=0.01, max_shift=1.5) if v.residual_affine else np.eye(4)
    inv = np.linalg.inv(a)
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"), 0)
    rel = idx - torch.tensor(centre, dtype=torch.float32).view(3, 1, 1, 1)
    src = torch.einsum("ij,jxyz->ixyz", torch.tensor(inv[:3, :3], dtype=torch.float32), rel)
    src += torch.tensor(centre - inv[:3, :3] @ a[:3, 3], dtype=torch.float32).view(3, 1, 1, 1)
    del rel, idx
    disp = displacement_field(rng, shape, spacing, mask0, v)
    src += disp
    size = torch.tensor(shape, dtype=torch.float32).view(3, 1, 1, 1)
    grid = (2 * src / (size - 1) - 1).flip(0).permute(1, 2, 3, 0)[None]
    del src

    def warp(volume, mode: str) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
        return F.grid_sample(t, grid, mode=mode, padding_mode="zeros", align_corners=True)[0, 0]

    mask = warp(base.mask.astype(np.float32), "nearest") > 0
    labels = torch.where(mask, warp(base.labels, "nearest").round().to(torch.uint8), torch.zeros((), dtype=torch.uint8))
    synth = rng.uniform() < v.synth_prob
    if synth:
        image = synthesize(rng, labels, mask, label_means(base) if means is None else means, v)
    else:
        image = warp(base.image, "bilinear")
    peak = float(image.max())
    x = (image / peak).clamp(min=0)
    if v.blur_vox > 0:
        x = _gaussian_blur(x, [float(rng.uniform(0, v.blur_vox))] * 3)
    if rng.uniform() < v.thick_prob:  # another protocol's slice thickness along one axis
        axis, k = int(rng.integers(3)), int(rng.integers(2, 5))
        sig = [0.0, 0.0, 0.0]
        sig[axis] = k / 2.355  # the slice profile's FWHM = its thickness
        x = _gaussian_blur(x, sig)
        keep = torch.arange(0, shape[axis], k)
        coarse = x.index_select(axis, keep)[None, None]
        x = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)[0, 0]
    if v.bias > 0:
        x = x * torch.exp(_smooth_field(rng, shape, 1, 40.0, v.bias)[0])
    if v.gamma_sd > 0:
        x = x.clamp(min=0) ** float(np.exp(rng.normal(0.0, v.gamma_sd)))
    sigma = float(rng.uniform(*v.noise))
    if sigma > 0:
        n1 = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) * sigma
        n2 = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) * sigma
        x = torch.sqrt((x + n1) ** 2 + n2**2)
    x = torch.where(mask, x.clamp(min=1e-4) * peak, torch.zeros(()))
    name = f"{base.name}-wide{'-synth' if synth else ''}-{seed}-{index:05d}"
    subject = Subject(image=x.numpy(), labels=labels.numpy(), affine=base.affine.copy(), name=name)
    return (subject, disp) if return_field else subject
