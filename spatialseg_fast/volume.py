"""Volume = voxel data + 4x4 affine (voxel indices -> millimetres), as in NIfTI."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    data: object
    """[D, H, W] numpy array or torch tensor."""
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    """4x4 voxel-to-world (mm) matrix."""
    header: object = None
    """The source file's header when loaded from disk (kept for writing outputs)."""

    def __post_init__(self):
        a = np.asarray(self.affine, dtype=np.float64)
        if a.shape != (4, 4) or not np.isfinite(a).all():
            raise ValueError(f"affine must be a finite 4x4 matrix; got shape {a.shape}")
        if abs(np.linalg.det(a[:3, :3])) < 1e-12:
            raise ValueError("affine is singular (a zero-sized voxel axis)")
        self.affine = a

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


NIFTI_SUFFIXES = (".nii", ".nii.gz")


def load_label_map(path) -> "Volume":
    """A 2D or 3D label map from .nii/.nii.gz (affine kept; a 2D map's voxel size is its first two
    columns) or .npy (identity affine), as integers.

    Raises ValueError with a one-line reason for a missing, unreadable or non-integer file."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    name = path.name.lower()
    try:
        if name.endswith(".npy"):
            data, affine, header = np.load(path, allow_pickle=False), np.eye(4), None
        elif name.endswith(NIFTI_SUFFIXES):
            import nibabel as nib

            img = nib.load(str(path))
            data, affine, header = np.asanyarray(img.dataobj), img.affine, img.header
        else:
            raise ValueError(f"{path}: not a NIfTI (.nii, .nii.gz) or .npy file")
    except ValueError:
        raise
    except Exception as exc:  # nibabel / numpy raise many types for broken files
        raise ValueError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise ValueError(f"{path}: a label map must be 2D or 3D; got shape {data.shape}")
    data = _as_labels(data, path, "label map")
    return Volume(np.ascontiguousarray(data), affine, header)


def _as_labels(data: np.ndarray, path, what: str) -> np.ndarray:
    """Integer data of a label map or mask (whole-valued floats accepted), else a ValueError."""
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
            raise ValueError(f"{path}: holds non-integer values, not a {what}")
        return data.astype(np.int64)
    if data.dtype.kind not in "iub":
        raise ValueError(f"{path}: data type {data.dtype} is not a {what} type")
    return data


def resample(volume: "Volume", shape, affine, kind: str = "intensity", fill: float = 0.0) -> "Volume":
    """`volume` on another grid (``shape``, voxel-to-world ``affine``): trilinear for
    ``kind="intensity"`` (anti-aliased by a Gaussian when the target voxels are coarser, so that
    downsampling averages instead of picking samples), nearest neighbour for ``kind="label"``, and
    for ``kind="label_linear"`` the label with the largest summed trilinear weight among the 8
    source voxels around each target position (nearest neighbour keeps a label whose voxel centre
    happens to be closest; the weighted vote keeps thin structures' boundaries where linear
    interpolation of each label's indicator would put them, which matters on rotated grids).
    World positions outside the source read `fill`."""
    import warnings

    import torch
    import torch.nn.functional as F

    if kind not in ("intensity", "label", "label_linear"):
        raise ValueError(f"kind must be 'intensity', 'label' or 'label_linear'; got {kind!r}")
    src = torch.as_tensor(np.ascontiguousarray(volume.data))
    if src.ndim != 3:
        raise ValueError(f"resample needs a 3D volume; got shape {tuple(src.shape)}")
    shape = tuple(int(s) for s in shape)
    target = np.asarray(affine, dtype=np.float64)
    # target voxel index -> source voxel index
    m = np.linalg.inv(volume.affine) @ target
    data = src.to(torch.float64 if kind == "label" else torch.float32)
    if kind == "intensity":
        step = np.linalg.norm(m[:3, :3], axis=1)  # a target voxel's extent in source voxels, per source axis
        data = _gaussian(data, np.sqrt(np.clip(step**2 - 1.0, 0.0, None)) / 2.0)
    if kind == "label_linear":
        return Volume(_label_vote(src, shape, m, fill), target)
    with warnings.catch_warnings():  # unit-size target axes: any normalised value maps to index 0 here
        warnings.filterwarnings("ignore", message=".*unit-size grids.*")
        g = F.affine_grid(torch.from_numpy(_normalised_theta(m, shape, src.shape)).to(data.dtype)[None],
                          (1, 1, *shape), align_corners=True)
    out = F.grid_sample((data - fill)[None, None], g, mode="bilinear" if kind == "intensity" else "nearest",
                        padding_mode="zeros", align_corners=True)[0, 0] + fill
    if kind == "label":
        out = out.round().to(src.dtype)
    return Volume(out.numpy(), target)


def _normalised_theta(m: np.ndarray, target_shape, source_shape) -> np.ndarray:
    """The 3x4 `affine_grid` matrix for the index map ``m`` (target voxel -> source voxel): both
    sides in grid_sample's normalised coordinates (align_corners=True: -1 and 1 at the first and
    last voxel centres) with the axes reversed to (x, y, z) = (last, middle, first). torch then
    builds the sampling grid itself, in one pass and without a float64 index array."""
    t = np.asarray(target_shape, dtype=np.float64)
    size = np.asarray(source_shape, dtype=np.float64)
    half = np.diag((t - 1) / 2)  # target index = half @ (u + 1)
    scale = np.diag(2.0 / np.maximum(size - 1, 1))  # source normalised = scale @ index - 1
    a = scale @ m[:3, :3] @ half
    b = scale @ (m[:3, :3] @ half @ np.ones(3) + m[:3, 3]) - 1.0
    rev = np.eye(3)[::-1]
    return np.c_[rev @ a @ rev, rev @ b]


def _label_vote(src, shape, m: np.ndarray, fill, slab_voxels: int = 1 << 18) -> np.ndarray:
    """resample's "label_linear": target voxel i reads the label whose source voxels among the 8
    around m @ i carry the largest summed trilinear weight (ties: the heavier, nearer corner).
    Runs over slabs of ~slab_voxels target voxels (~200 bytes each at the peak: ~50 MB at the
    default, whatever the grid); voxels whose 8 corners agree (most of a label map) skip the vote.
    Any integer dtype (computed in int64: torch cannot gather uint16/uint32)."""
    import torch

    dtype = np.asarray(src.numpy()[:0]).dtype
    src = src.to(torch.int64)
    labels = src.reshape(-1)
    size = torch.tensor(src.shape)
    strides = torch.tensor([src.shape[1] * src.shape[2], src.shape[2], 1])
    fill_t = torch.tensor(fill).to(labels.dtype)
    mt = torch.from_numpy(m[:3, :3].T.copy())
    out = torch.empty(shape, dtype=labels.dtype)
    rows = max(1, slab_voxels // max(shape[1] * shape[2], 1))
    corners = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    # the box of source voxels that are not `fill`, grown by one voxel: only there is a vote needed
    found = (src != fill_t).nonzero()
    if not len(found):
        return torch.full(shape, fill_t.item(), dtype=labels.dtype).numpy().astype(dtype)
    lo, hi = found.min(0).values.double() - 1, found.max(0).values.double() + 1
    jk = torch.stack(torch.meshgrid(torch.arange(shape[1], dtype=torch.float64),
                                    torch.arange(shape[2], dtype=torch.float64), indexing="ij"), -1).reshape(-1, 2)
    for i0 in range(0, shape[0], rows):
        i1 = min(i0 + rows, shape[0])
        ii = torch.arange(i0, i1, dtype=torch.float64).repeat_interleave(len(jk))
        idx = torch.cat([ii[:, None], jk.repeat(i1 - i0, 1)], 1)
        pos = idx @ mt + torch.from_numpy(m[:3, 3])
        pick = torch.full((len(pos),), fill_t.item(), dtype=labels.dtype)
        near = ((pos > lo) & (pos < hi)).all(1).nonzero()[:, 0]  # elsewhere all 8 corners read `fill`
        pos = pos[near]
        base = pos.floor()
        frac = pos - base
        at = base.long()[:, None, :] + corners  # [n, 8, 3]
        inside = ((at >= 0) & (at < size)).all(-1)
        cand = torch.where(inside, labels[((at * strides).sum(-1)).clamp(0, labels.numel() - 1)], fill_t)
        got = cand[:, 0].clone()
        vote = (cand != cand[:, :1]).any(1).nonzero()[:, 0]
        if len(vote):
            c, f = cand[vote], frac[vote]
            weight = torch.where(corners.bool(), f[:, None, :], 1.0 - f[:, None, :]).prod(-1)  # [v, 8]
            score = ((c[:, :, None] == c[:, None, :]) * weight[:, None, :]).sum(-1) + 1e-9 * weight
            got[vote] = c.gather(1, score.argmax(1, keepdim=True))[:, 0]
        pick[near] = got
        out[i0:i1] = pick.view(i1 - i0, shape[1], shape[2])
    return out.numpy().astype(dtype, copy=False)


def _gaussian(data, sigma_per_axis):
    """Separable Gaussian blur of a 3D tensor, sigma in voxels per axis (zero-padded edges)."""
    import torch
    import torch.nn.functional as F

    out = data
    for axis, s in enumerate(sigma_per_axis):
        if s <= 0.2:
            continue
        r = int(np.ceil(3 * s))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=data.dtype) / s) ** 2)
        k = (k / k.sum()).view(1, 1, -1)
        moved = out.movedim(axis, -1)
        flat = moved.reshape(-1, 1, moved.shape[-1])
        out = F.conv1d(F.pad(flat, (r, r)), k).reshape(moved.shape).movedim(-1, axis)
    return out


def _read_nifti(path):
    """(data as a numpy array, affine, header) of a NIfTI file, or ValueError with a one-line reason."""
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{path}: not a NIfTI file (.nii or .nii.gz)")
    try:
        import nibabel as nib

        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ValueError("not a NIfTI-1/2 image")
        data = np.asanyarray(img.dataobj)  # reads (and decompresses) everything: truncation shows here
        affine, header = img.affine, img.header
    except ValueError as exc:
        raise ValueError(f"{path}: cannot be read as NIfTI ({exc})") from None
    except Exception as exc:  # nibabel, gzip and numpy raise many types for broken files
        raise ValueError(f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {exc})") from None
    return data, affine, header


def load_volume(path, kind: str = "intensity") -> Volume:
    """A 3D image from .nii/.nii.gz (a 4D one with a single volume is accepted), affine and
    header kept, in the file's own orientation. kind="intensity": float32, finite, not all zero;
    kind="label"/"mask": integers. ValueError with a one-line reason otherwise."""
    data, affine, header = _read_nifti(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D image (or 4D with one volume); got {data.ndim}D with shape {tuple(data.shape)}")
    if min(data.shape) < 1:
        raise ValueError(f"{path}: the image is empty (shape {tuple(data.shape)})")
    if not np.all(np.isfinite(np.linalg.det(affine[:3, :3]))) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError(f"{path}: the header's affine is singular or not finite")
    if kind == "intensity":
        if data.dtype.kind not in "iufb":
            raise ValueError(f"{path}: data type {data.dtype} is not an image type")
        data = np.asarray(data, dtype=np.float32)
        if not np.all(np.isfinite(data)):
            raise ValueError(f"{path}: contains NaN or infinite voxels")
        if not np.any(data):
            raise ValueError(f"{path}: every voxel is zero")
    else:
        data = _as_labels(data, path, kind)
    return Volume(np.ascontiguousarray(data), affine, header)


def to_ras(volume: Volume) -> Volume:
    """The same image with its array axes reordered/flipped to (closest) RAS+ orientation."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(volume.data), volume.affine))
    return Volume(np.ascontiguousarray(np.asanyarray(img.dataobj)), img.affine, volume.header)


def save_volume(volume: Volume, path, dtype=None) -> None:
    """Write a NIfTI file atomically: a temporary file in the same folder renamed into place, so a
    crash never leaves a half-written output. The source header (if any) is kept, with the data
    type set from the data (or `dtype`)."""
    from pathlib import Path

    import nibabel as nib

    from ._atomic import atomic_path

    path = Path(path)
    data = np.asarray(volume.data)
    if dtype is not None:
        data = data.astype(dtype)
    if data.dtype == np.float16:  # NIfTI has no half type: the values are kept exactly in float32
        data = data.astype(np.float32)
    header = volume.header.copy() if isinstance(volume.header, nib.Nifti1Header) else None
    img = nib.Nifti1Image(data, volume.affine, header)
    img.set_data_dtype(data.dtype)
    img.header.set_slope_inter(1, 0)
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".tmp" + suffix) as tmp:
            nib.save(img, tmp)
    except OSError as exc:
        raise ValueError(f"{path}: cannot be written ({exc.strerror or exc})") from None
