"""The probabilistic atlas a ProbBranch model carries, stored sparsely.

A voxel of an atlas built from N training label maps has at most N classes and in practice 1-4,
while a dense [135, D, H, W] float16 atlas on the template grid is 1.7 GB. ``SparseAtlas`` keeps
the K most frequent classes per voxel (index + float16 probability, renormalised to sum to 1),
expands only the boxes the engine asks for, and is stored zlib-compressed inside the model file.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SparseAtlas:
    index: torch.Tensor
    """[K, D, H, W] class indices (uint8, or int16 beyond 256 classes), most frequent first."""
    prob: torch.Tensor
    """[K, D, H, W] float16 probabilities (0 for unused slots); they sum to 1 per voxel."""
    num_classes: int

    @property
    def shape(self) -> tuple:
        return (self.num_classes, *self.index.shape[1:])

    @property
    def ndim(self) -> int:
        return 4

    def box(self, box: tuple) -> torch.Tensor:
        """Dense float32 [L, *box] probabilities of a box (tuple of three slices)."""
        idx = self.index[(slice(None), *box)].long()
        p = self.prob[(slice(None), *box)].float()
        out = torch.zeros((self.num_classes, *idx.shape[1:]), dtype=torch.float32, device=idx.device)
        return out.scatter_add_(0, idx, p)

    def rows(self, xyz: torch.Tensor) -> torch.Tensor:
        """[n, L] float32 probabilities at voxels xyz [n, 3]."""
        x, y, z = xyz.long().unbind(1)
        idx, p = self.index[:, x, y, z].long().T, self.prob[:, x, y, z].float().T
        return torch.zeros((len(xyz), self.num_classes), dtype=torch.float32, device=idx.device).scatter_add_(1, idx, p)

    def to(self, device) -> "SparseAtlas":
        """The same atlas with its arrays on `device` (training on a GPU reads its rows there)."""
        return SparseAtlas(self.index.to(device), self.prob.to(device), self.num_classes)

    def to_dense(self, dtype=torch.float16) -> torch.Tensor:
        """The whole [L, D, H, W] atlas."""
        return self.box((slice(None),) * 3).to(dtype)

    # -- storage (inside a model file): zlib-compressed arrays + their shape ----------------
    def to_bytes(self) -> tuple[np.ndarray, dict]:
        idx = self.index.numpy()
        blob = zlib.compress(idx.tobytes() + self.prob.numpy().tobytes(), 6)
        return np.frombuffer(blob, dtype=np.uint8).copy(), {
            "shape": list(self.index.shape), "num_classes": self.num_classes, "index_dtype": str(idx.dtype)}

    @classmethod
    def from_bytes(cls, blob: np.ndarray, meta: dict) -> "SparseAtlas":
        shape = tuple(int(s) for s in meta["shape"])
        idx_dtype = np.dtype(meta["index_dtype"])
        raw = zlib.decompress(np.asarray(blob, dtype=np.uint8).tobytes())
        n = int(np.prod(shape))
        if len(raw) != n * (idx_dtype.itemsize + 2):
            raise ValueError("atlas data has the wrong size for its shape")
        index = np.frombuffer(raw[: n * idx_dtype.itemsize], dtype=idx_dtype).reshape(shape)
        prob = np.frombuffer(raw[n * idx_dtype.itemsize :], dtype=np.float16).reshape(shape)
        return cls(torch.from_numpy(index.copy()), torch.from_numpy(prob.copy()), int(meta["num_classes"]))

    def __getitem__(self, key) -> torch.Tensor:
        """atlas[:, box...] as a dense float32 tensor (the engine's per-slab read)."""
        if not (isinstance(key, tuple) and len(key) == 4 and key[0] == slice(None)):
            raise IndexError("a SparseAtlas is read as atlas[:, slice, slice, slice]")
        return self.box(key[1:])
