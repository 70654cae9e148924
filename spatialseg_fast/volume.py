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
