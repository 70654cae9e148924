"""Pseudo-subjects: one real template turned into many plausible subjects.

Each subject is the template warped by a random affine map (rotation up to 10 degrees about each
axis, scale 0.9-1.1 per axis, shear up to 0.05, shift up to 4 mm, about the brain's centre)
composed with a smooth elastic displacement (a few mm), image and labels through the same map
(labels by nearest neighbour), then a smooth multiplicative bias field, a gamma change of contrast
and Rician noise inside the brain (the background stays 0: inputs are skull-stripped).
Everything is drawn from ``numpy.random.default_rng((seed, index))``: a subject depends only on
the seed and its index, not on how many subjects are made or in which order.

The paper's split (``paper_split``): 10 training, 5 validation and 20 test subjects from the
CAT12 template; the ICBM 2009c T1 (and subjects made from it) is the held-out test from a
template never seen in training.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .templates import Subject, load_source


def _rotation(angles_deg) -> np.ndarray:
    a, b, c = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_affine(rng: np.random.Generator, max_rotation=10.0, max_scale=0.1, max_shear=0.05, max_shift=4.0) -> np.ndarray:
    """A 4x4 map (voxel units, about the origin) of rotation, scale, shear and shift."""
    linear = _rotation(rng.uniform(-max_rotation, max_rotation, 3))
    linear = linear @ np.diag(rng.uniform(1 - max_scale, 1 + max_scale, 3))
    shear = np.eye(3)
    shear[np.triu_indices(3, 1)] = rng.uniform(-max_shear, max_shear, 3)
    out = np.eye(4)
    out[:3, :3] = linear @ shear
    out[:3, 3] = rng.uniform(-max_shift, max_shift, 3)
    return out


def _smooth_field(rng, shape, channels: int, spacing_vox: float, amplitude: float) -> torch.Tensor:
    """[channels, *shape] smooth random field: normal noise on a coarse grid (one value per
    `spacing_vox` voxels), upsampled trilinearly, scaled so its standard deviation is `amplitude`."""
    coarse = [max(2, int(math.ceil(n / spacing_vox)) + 1) for n in shape]
    noise = torch.from_numpy(rng.standard_normal((1, channels, *coarse)).astype(np.float32))
    field = F.interpolate(noise, size=tuple(shape), mode="trilinear", align_corners=True)[0]
    return field * (amplitude / max(float(field.std()), 1e-6))


def make_subject(base: Subject, seed: int, index: int, *, space: str = "template", elastic_mm: float = 2.0,
                 noise: tuple = (0.01, 0.03), bias: float = 0.1, gamma_sd: float = 0.1) -> Subject:
    """Pseudo-subject `index` of `seed` made from `base` (see the module docstring).

    space="native": the subject as scanned, through the full random affine map.
    space="template": the same subject after an affine registration to the template, as the
    paper's inputs were: the random affine map undone up to a small registration error
    (rotation <= 2 degrees, scale +-2%, shear <= 0.01, shift <= 1.5 mm); elastic warp and
    intensities as in the native subject."""
    if space not in ("native", "template"):
        raise ValueError(f"space must be 'native' or 'template'; got {space!r}")
    rng = np.random.default_rng((int(seed), int(index)))
    shape = base.image.shape
    spacing = np.linalg.norm(base.affine[:3, :3], axis=0)
    centre = np.argwhere(base.mask).mean(0)
    # output voxel x reads the template at  centre + A^-1 (x - centre) + u(x)
    a = random_affine(rng)
    residual = random_affine(rng, max_rotation=2.0, max_scale=0.02, max_shear=0.01, max_shift=1.5)
    if space == "template":
        a = residual
    inv = np.linalg.inv(a)
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"), 0)
    rel = idx - torch.tensor(centre, dtype=torch.float32).view(3, 1, 1, 1)
    src = torch.einsum("ij,jxyz->ixyz", torch.tensor(inv[:3, :3], dtype=torch.float32), rel)
    src += torch.tensor(centre - inv[:3, :3] @ a[:3, 3], dtype=torch.float32).view(3, 1, 1, 1)
    disp = _smooth_field(rng, shape, 3, 12.0, elastic_mm) / torch.tensor(spacing, dtype=torch.float32).view(3, 1, 1, 1)
    src += disp
    size = torch.tensor(shape, dtype=torch.float32).view(3, 1, 1, 1)
    grid = (2 * src / (size - 1) - 1).flip(0).permute(1, 2, 3, 0)[None]  # (x, y, z) = (W, H, D) axes

    def warp(volume: np.ndarray, mode: str) -> torch.Tensor:
        v = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
        return F.grid_sample(v, grid, mode=mode, padding_mode="zeros", align_corners=True)[0, 0]

    image = warp(base.image, "bilinear")
    labels = warp(base.labels, "nearest").round().to(torch.uint8)
    mask = warp(base.mask.astype(np.float32), "nearest") > 0
    # intensities: bias field, gamma, Rician noise, all inside the brain only
    peak = float(image.max())
    x = (image / peak).clamp(min=0)
    x = x * torch.exp(_smooth_field(rng, shape, 1, 40.0, bias)[0])
    x = x.clamp(min=0) ** float(np.exp(rng.normal(0.0, gamma_sd)))
    sigma = float(rng.uniform(*noise))
    n1 = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) * sigma
    n2 = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) * sigma
    x = torch.sqrt((x + n1) ** 2 + n2**2) * peak
    x = torch.where(mask, x.clamp(min=1e-6 * peak), torch.zeros(()))
    # the truth is what a segmentation of this image can cover: labels inside its brain mask
    labels = torch.where(mask, labels, torch.zeros((), dtype=torch.uint8))
    name = f"{base.name}-{seed}-{index:03d}" + ("-native" if space == "native" else "")
    return Subject(image=x.numpy(), labels=labels.numpy(), affine=base.affine.copy(), name=name)


def make_cohort(source, n: int, seed: int = 0, *, start: int = 0, **kwargs) -> list[Subject]:
    """Subjects ``start .. start + n - 1`` of `seed` made from `source` ("cat12", "icbm2009c" or a
    :class:`Subject`); keyword arguments go to :func:`make_subject` (e.g. ``space="native"``)."""
    base = load_source(source) if isinstance(source, str) else source
    if n < 0 or start < 0:
        raise ValueError("n and start must be >= 0")
    return [make_subject(base, seed, i, **kwargs) for i in range(start, start + n)]


SPLIT = {"train": (0, 10), "validation": (10, 5), "test": (15, 20)}


def paper_split(part: str, seed: int = 0, source="cat12") -> list[Subject]:
    """The paper's split of CAT12 pseudo-subjects: "train" (10), "validation" (5), "test" (20)."""
    if part not in SPLIT:
        raise ValueError(f"part must be one of {', '.join(SPLIT)}; got {part!r}")
    start, n = SPLIT[part]
    return make_cohort(source, n, seed, start=start)
