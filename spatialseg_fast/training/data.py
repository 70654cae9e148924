"""Training subjects prepared once: normalised, smoothed for every 2D scale, labels as class indices."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..inference import prepare_source
from ..model.network import SpatialSegNet
from ..ops import PatchSource


@dataclass
class TrainSubject:
    source: PatchSource
    """Normalised volume and its smoothed copies (what the network reads)."""
    mask: torch.Tensor
    """[D, H, W] bool: the voxels that are samples (the brain)."""
    target: torch.Tensor
    """[D, H, W] int64 class indices."""
    name: str = ""

    def to(self, device) -> "TrainSubject":
        """The same subject with its tensors on `device`."""
        return TrainSubject(source=self.source.to(device), mask=self.mask.to(device), target=self.target.to(device),
                            name=self.name)

    @property
    def mask_p(self) -> torch.Tensor:
        """The mask plane-major (slice axis first)."""
        p = self.source.config
        return self.mask.permute((p.slice_axis, *p.in_plane_axes))


def class_indices(labels: np.ndarray, label_values) -> np.ndarray:
    """Label values -> class indices (ValueError for a value outside the table)."""
    values = np.asarray(label_values)
    lut = np.full(max(int(values.max()), int(labels.max())) + 1, -1, dtype=np.int64)
    lut[values] = np.arange(len(values))
    out = lut[labels]
    if (out < 0).any():
        bad = sorted(set(np.unique(labels[out < 0]).tolist()))[:5]
        raise ValueError(f"label map holds values outside the model's label table: {bad}")
    return out


def prepare_subject(model: SpatialSegNet, image: np.ndarray, labels: np.ndarray, spacing=(1.0, 1.0, 1.0),
                    name: str = "") -> TrainSubject:
    vol = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    source = prepare_source(model, vol, spacing=spacing)
    target = torch.from_numpy(class_indices(np.asarray(labels), model.config.output_values()))
    return TrainSubject(source=source, mask=vol != 0, target=target, name=name)
