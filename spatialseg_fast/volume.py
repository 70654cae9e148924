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
    """A label map from .nii/.nii.gz (affine kept) or .npy (identity affine), as integers.

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
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
            raise ValueError(f"{path}: holds non-integer values, not labels")
        data = data.astype(np.int64)
    elif data.dtype.kind not in "iub":
        raise ValueError(f"{path}: data type {data.dtype} is not a label type")
    return Volume(np.ascontiguousarray(data), affine if data.ndim == 3 else np.eye(4), header)
