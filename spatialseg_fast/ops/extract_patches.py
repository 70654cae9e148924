"""Fused multi-scale patch extraction (paper §2.1-2.3) and its plain-torch reference.

For each centre voxel, in one pass: the 2D patches at every scale of the :class:`PatchConfig`
(P x P samples at strides 1, 2, 3 in the slicing plane, read from anti-alias-smoothed copies of
the volume), the Q^3 3D patch, the landmark-distance image and the atlas probability vector.
2D patches may be rotated (degrees) and scaled per sample around their centre, by bilinear
sampling (the paper's augmentation). Samples outside the volume read ``config.fill``.

Smoothing is done once per volume by :func:`prepare_patch_source`; pass the returned
:class:`PatchSource` to :func:`extract_patches` when drawing many batches from one volume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .._backend import extension, resolve_backend, resolve_threads
from ..config import PatchConfig
from ._checks import as_tensor, check_atlas, check_centres, check_per_sample, check_spacing, check_volume
from .landmark_distances import landmark_distances_ref


class Patches(NamedTuple):
    planes: torch.Tensor
    """[N, S, P, P] 2D patches, axes (u, v) = the config's in-plane axes in increasing order."""
    cube: torch.Tensor | None
    """[N, Q, Q, Q] 3D patches in array axis order (None when patch3d == 0)."""
    distances: torch.Tensor | None
    """[N, G, G, G] landmark distances in mm (None when grid == 0)."""
    atlas: torch.Tensor | None
    """[N, L] atlas probabilities at each centre (None without an atlas)."""


@dataclass(frozen=True)
class PatchSource:
    """A validated volume ready for repeated patch extraction."""

    volume: torch.Tensor
    """[D, H, W] raw volume (the 3D patches)."""
    scales: torch.Tensor
    """[S, n_w, n_u, n_v] in-plane smoothed copies, one per 2D scale, plane-major: the slicing
    axis first, then the in-plane axes (u < v), so a 2D patch reads one contiguous slice."""
    atlas: torch.Tensor | None
    """[D, H, W, L] atlas probabilities, channels last (one contiguous read per centre)."""
    spacing: tuple[float, float, float]
    config: PatchConfig

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.volume.shape)  # type: ignore[return-value]

    def to(self, device=None, dtype=None) -> "PatchSource":
        move = lambda t: None if t is None else t.to(device=device, dtype=dtype).contiguous()
        return replace(self, volume=move(self.volume), scales=move(self.scales), atlas=move(self.atlas))


def gaussian_kernel1d(sigma: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """Normalised Gaussian taps, radius ceil(3 sigma) (a single 1 for sigma == 0)."""
    radius = int(math.ceil(3.0 * sigma)) if sigma > 0 else 0
    if radius == 0:
        return torch.ones(1, dtype=dtype, device=device)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def smooth_in_plane(volume: torch.Tensor, sigma: float, slice_axis: int, fill: float = 0.0) -> torch.Tensor:
    """Separable Gaussian smoothing along the two axes other than `slice_axis`.

    Outside the volume reads `fill`, as patch sampling does, so a smoothed slice and the
    patches cut from it agree everywhere (the dense engine relies on this).
    """
    kernel = gaussian_kernel1d(sigma, dtype=volume.dtype, device=volume.device)
    if kernel.numel() == 1:
        return volume.clone()
    radius = kernel.numel() // 2
    out = volume
    for axis in (a for a in range(3) if a != slice_axis):
        moved = out.movedim(axis, -1)
        rows = moved.reshape(-1, 1, moved.shape[-1])
        padded = F.pad(rows, (radius, radius), mode="constant", value=fill)
        rows = F.conv1d(padded, kernel.view(1, 1, -1))
        out = rows.reshape(moved.shape).movedim(-1, axis)
    return out.contiguous()


def prepare_patch_source(volume, config: PatchConfig | None = None, *, atlas=None, spacing=None, dtype=None) -> PatchSource:
    """Validate a volume (and atlas) and smooth it once for every 2D scale.

    volume: [D, H, W] floating-point, finite. atlas: [L, D, H, W] class probabilities on the same
    grid. spacing: mm per axis (distances). dtype: storage dtype (default: float32, float64 kept).
    """
    config = config or PatchConfig()
    vol = as_tensor(volume, "volume")
    check_volume(vol)
    spacing = check_spacing(spacing)
    if dtype is None:
        dtype = torch.float64 if vol.dtype == torch.float64 else torch.float32
    vol = vol.detach().to(dtype).contiguous()
    order = (config.slice_axis, *config.in_plane_axes)
    scales = torch.stack(
        [smooth_in_plane(vol, s, config.slice_axis, config.fill).permute(order) for s in config.sigmas]
    ).contiguous()
    atl = None
    if atlas is not None:
        atl = check_atlas(atlas, vol.shape).detach().to(device=vol.device, dtype=dtype).permute(1, 2, 3, 0).contiguous()
    return PatchSource(volume=vol, scales=scales, atlas=atl, spacing=spacing, config=config)


def _plane_index(source: PatchSource, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor):
    """Flat index into one plane-major scale image of (w, u, v), and whether it lies inside."""
    n_w, n_u, n_v = source.scales.shape[1:]
    inside = (u >= 0) & (u < n_u) & (v >= 0) & (v < n_v)
    flat = (w * n_u + u.clamp(0, n_u - 1)) * n_v + v.clamp(0, n_v - 1)
    return flat, inside


def rotation_terms(rotation, scale, n: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(f cos t, f sin t) per sample from rotations in degrees and scales (None: 0 and 1),
    computed in float64 and cast to `dtype`; shared by the reference and the Triton launcher."""
    t = torch.zeros(n, dtype=torch.float64, device=device) if rotation is None else rotation.to(device, torch.float64)
    f = torch.ones(n, dtype=torch.float64, device=device) if scale is None else scale.to(device, torch.float64)
    t = torch.deg2rad(t)
    return (f * torch.cos(t)).to(dtype), (f * torch.sin(t)).to(dtype)


def extract_patches_ref(source: PatchSource, centres: torch.Tensor, rotation=None, scale=None) -> Patches:
    """Plain-torch reference, vectorised over samples (gathers, no Python loop over centres).

    Positions and interpolation are computed in the source's dtype (float64 for a float64 source).
    """
    cfg = source.config
    dtype, dev = source.volume.dtype, source.volume.device
    c = centres.to(device=dev, dtype=torch.int64)
    n = c.shape[0]
    au, av = cfg.in_plane_axes
    fill = torch.tensor(cfg.fill, dtype=dtype, device=dev)

    # 2D patches: sample (i, j) at c + f * R(t) @ ((i - h) s, (j - h) s), bilinear, taps outside read fill.
    cos_f, sin_f = rotation_terms(rotation, scale, n, dev, dtype)
    h = (cfg.patch2d - 1) / 2.0
    offsets = torch.arange(cfg.patch2d, dtype=dtype, device=dev) - h
    w = c[:, cfg.slice_axis].view(n, 1, 1)
    planes = []
    for k, stride in enumerate(cfg.strides):
        a = (offsets * stride).view(1, -1, 1)
        b = (offsets * stride).view(1, 1, -1)
        ru = cos_f.view(n, 1, 1) * a - sin_f.view(n, 1, 1) * b
        rv = sin_f.view(n, 1, 1) * a + cos_f.view(n, 1, 1) * b
        fu, fv = torch.floor(ru), torch.floor(rv)
        wu, wv = ru - fu, rv - fv
        u0 = c[:, au].view(n, 1, 1) + fu.long()
        v0 = c[:, av].view(n, 1, 1) + fv.long()
        image = source.scales[k].reshape(-1)

        def tap(du, dv):
            flat, inside = _plane_index(source, w.expand_as(u0), u0 + du, v0 + dv)
            return torch.where(inside, image[flat], fill)

        top = tap(0, 0) + wv * (tap(0, 1) - tap(0, 0))
        bot = tap(1, 0) + wv * (tap(1, 1) - tap(1, 0))
        planes.append(top + wu * (bot - top))
    planes = torch.stack(planes, dim=1)

    cube = None
    if cfg.patch3d:
        q = cfg.patch3d
        r = torch.arange(q, device=dev) - (q - 1) // 2
        pos = [c[:, a].view(n, 1, 1, 1) + r.view([q if d == a else 1 for d in range(3)]) for a in range(3)]
        shape = source.shape
        inside = torch.ones((n, q, q, q), dtype=torch.bool, device=dev)
        for a in range(3):
            inside &= (pos[a] >= 0) & (pos[a] < shape[a])
        flat = (pos[0].clamp(0, shape[0] - 1) * shape[1] + pos[1].clamp(0, shape[1] - 1)) * shape[2] + pos[2].clamp(0, shape[2] - 1)
        cube = torch.where(inside, source.volume.reshape(-1)[flat], fill)

    distances = None
    if cfg.grid:
        distances = landmark_distances_ref(c.to(torch.float64 if dtype == torch.float64 else torch.float32), source.shape, source.spacing, cfg.grid)

    atlas = None
    if source.atlas is not None:
        atlas = source.atlas[c[:, 0], c[:, 1], c[:, 2]]
    return Patches(planes, cube, distances, atlas)


def _output_shapes(source: PatchSource, n: int):
    cfg = source.config
    P, Q, G = cfg.patch2d, cfg.patch3d, cfg.grid
    return (
        (n, cfg.num_scales, P, P),
        (n, Q, Q, Q) if Q else None,
        (n, G, G, G) if G else None,
        None if source.atlas is None else (n, source.atlas.shape[-1]),
    )


def _check_out(out, expected, device) -> None:
    if not isinstance(out, Patches):
        raise ValueError(f"out must be a Patches tuple; got {type(out).__name__}")
    for name, t, shape in zip(Patches._fields, out, expected):
        if shape is None:
            if t is not None:
                raise ValueError(f"out.{name} must be None for this source and config")
            continue
        if t is None or tuple(t.shape) != shape or t.dtype != torch.float32 or not t.is_contiguous() or t.device != device:
            got = None if t is None else f"{tuple(t.shape)} {t.dtype} on {t.device}"
            raise ValueError(f"out.{name} must be a contiguous float32 tensor of shape {shape} on {device}; got {got}")


def extract_patches(
    volume,
    centres,
    *,
    config: PatchConfig | None = None,
    atlas=None,
    spacing=None,
    rotation=None,
    scale=None,
    backend: str = "auto",
    num_threads: int | None = None,
    out: Patches | None = None,
) -> Patches:
    """Cut the paper's multi-scale patches around integer centre voxels, in one fused pass.

    volume: a [D, H, W] floating tensor/array, or a :class:`PatchSource` from
        :func:`prepare_patch_source` (then config/atlas/spacing come from the source).
    centres: [N, 3] integer voxel indices inside the volume.
    rotation: in-plane rotation of the 2D patches in degrees (scalar or [N]); scale: their scale
        factor (scalar or [N]); None for no augmentation.
    backend: "auto" | "cpp" | "triton" | "torch"; num_threads: C++ threads (None: torch's count).
    out: preallocated float32 contiguous buffers (e.g. the previous call's result) to write into,
        cpp/triton backends only; a training loop reuses them instead of faulting in ~22 KB of
        fresh memory per sample on every call.

    Returns :class:`Patches` (planes [N,S,P,P], cube [N,Q,Q,Q], distances [N,G,G,G], atlas [N,L]),
    float32 from cpp/triton, the source dtype from the torch reference.
    """
    if isinstance(volume, PatchSource):
        if config is not None or atlas is not None or spacing is not None:
            raise ValueError("config, atlas and spacing come from the PatchSource; do not pass them again")
        source = volume
    else:
        source = prepare_patch_source(volume, config, atlas=atlas, spacing=spacing)
    cfg = source.config
    dev = source.volume.device
    c = check_centres(centres, source.shape, integer=True).to(device=dev, dtype=torch.int64)
    n = c.shape[0]
    rot = check_per_sample(rotation, n, "rotation", dev)
    scl = check_per_sample(scale, n, "scale", dev, positive=True)
    if scl is not None:
        reach = float(scl.max()) * (cfg.patch2d // 2) * max(cfg.strides) * math.sqrt(2.0)
        if reach > 2048:
            raise ValueError(f"scale up to {float(scl.max()):g} makes 2D patches reach {reach:.0f} voxels; the limit is 2048")
    chosen = resolve_backend(backend, dev)

    if chosen == "torch":
        if out is not None:
            raise ValueError("out= is supported by the cpp and triton backends only")
        return extract_patches_ref(source, c, rot, scl)
    expected = _output_shapes(source, n)
    if out is None:
        out = Patches(*(None if s is None else torch.empty(s, dtype=torch.float32, device=dev) for s in expected))
    else:
        _check_out(out, expected, dev)

    if source.volume.dtype != torch.float32:
        source = source.to(dtype=torch.float32)
    if chosen == "triton":
        from ..kernels.extract_patches import extract_patches_triton

        extract_patches_triton(source, c, rot, scl, out)
        return out

    ext = extension()
    P, Q, G = cfg.patch2d, cfg.patch3d, cfg.grid
    planes, cube, distances, atl = out
    as_np = lambda t: None if t is None else t.numpy()
    as_f32 = lambda t: None if t is None else t.to(torch.float32).contiguous().numpy()
    ext.extract_patches(
        source.shape, source.scales.numpy(), source.volume.numpy() if Q else None, as_np(source.atlas),
        c.contiguous().numpy(), as_f32(rot), as_f32(scl),
        cfg.slice_axis, P, list(cfg.strides), Q, G, source.spacing, float(cfg.fill),
        planes.numpy(), as_np(cube), as_np(distances), as_np(atl), resolve_threads(num_threads),
    )
    return Patches(planes, cube, distances, atl)
