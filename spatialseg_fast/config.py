"""The patch geometry of the paper, in one place: every op, the model and the dense engine read it.

Array axes are those of a volume in canonical RAS order (x: left->right, y: posterior->anterior,
z: inferior->superior), so ``slice_axis=1`` gives coronal 2D patches, as in the paper's figures.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class PatchConfig:
    slice_axis: int = 1
    """Axis normal to the 2D patches (0 sagittal, 1 coronal, 2 axial in RAS order)."""
    patch2d: int = 25
    """Side of every 2D patch, in samples."""
    strides: tuple[int, ...] = (1, 2, 3)
    """Sampling stride of each 2D scale: 25 samples cover 25, 49 and 73 voxels."""
    patch3d: int = 15
    """Side of the 3D patch (0 for none)."""
    grid: int = 7
    """Landmarks per axis (G); the distance image is G x G x G (0 for none)."""
    fill: float = 0.0
    """Value read outside the volume."""
    smoothing: tuple[float, ...] | None = field(default=None)
    """In-plane Gaussian sigma (voxels) of each scale's anti-alias smoothing; None: (s - 1) / 2."""

    def __post_init__(self):
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if self.smoothing is not None:
            object.__setattr__(self, "smoothing", tuple(float(s) for s in self.smoothing))
        problems = []
        if self.slice_axis not in (0, 1, 2):
            problems.append(f"slice_axis must be 0, 1 or 2 (got {self.slice_axis})")
        if not 1 <= self.patch2d <= 255 or self.patch2d % 2 == 0:
            problems.append(f"patch2d must be an odd number from 1 to 255 (got {self.patch2d})")
        if self.patch3d < 0 or (self.patch3d and self.patch3d % 2 == 0):
            problems.append(f"patch3d must be 0 or a positive odd number (got {self.patch3d})")
        if not 1 <= len(self.strides) <= 8 or any(s < 1 for s in self.strides):
            problems.append(f"strides must be 1 to 8 positive integers (got {self.strides})")
        if self.grid < 0:
            problems.append(f"grid must be >= 0 (got {self.grid})")
        if not math.isfinite(self.fill):
            problems.append(f"fill must be finite (got {self.fill})")
        if self.smoothing is not None and (
            len(self.smoothing) != len(self.strides) or any(not (s >= 0) for s in self.smoothing)
        ):
            problems.append("smoothing needs one non-negative sigma per stride")
        if problems:
            raise ValueError("invalid PatchConfig: " + "; ".join(problems))

    @property
    def in_plane_axes(self) -> tuple[int, int]:
        """The two array axes spanned by the 2D patches, in increasing order."""
        return tuple(a for a in range(3) if a != self.slice_axis)  # type: ignore[return-value]

    @property
    def sigmas(self) -> tuple[float, ...]:
        """Anti-alias sigma per scale (skimage's rule (s - 1) / 2 unless given)."""
        if self.smoothing is not None:
            return self.smoothing
        return tuple((s - 1) / 2.0 for s in self.strides)

    @property
    def num_scales(self) -> int:
        return len(self.strides)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PatchConfig":
        return cls(**d)
