"""The probabilistic atlas for ProbBranch: per voxel, the frequency of each class over the
training label maps (the paper's "single probabilistic atlas"), kept sparse (model/atlas.py)."""
from __future__ import annotations

import numpy as np
import torch

from ..model.atlas import SparseAtlas


def build_atlas(label_maps, label_values, k: int = 4) -> SparseAtlas:
    """Class frequencies over `label_maps` (label values, all on one grid), as a SparseAtlas of
    the `k` most frequent classes per voxel. label_values[i] is class i's value (0 first)."""
    maps = [np.asarray(m) for m in label_maps]
    if not maps:
        raise ValueError("build_atlas needs at least one label map")
    if any(m.shape != maps[0].shape for m in maps):
        raise ValueError("label maps must share one grid")
    values = np.asarray(label_values)
    lut = np.full(int(max(values.max(), max(int(m.max()) for m in maps))) + 1, -1, dtype=np.int64)
    lut[values] = np.arange(len(values))
    L = len(values)
    shape = maps[0].shape
    ids = []
    for m in maps:
        c = lut[m]
        if (c < 0).any():
            raise ValueError(f"a label map holds values outside the label table: {sorted(set(np.unique(m)) - set(values.tolist()))[:5]}")
        ids.append(c)
    n = len(maps)
    k = min(k, n, L)
    V = int(np.prod(shape))
    flat = [c.reshape(-1) for c in ids]
    top_idx = np.zeros((k, V), dtype=np.int64)
    top_cnt = np.zeros((k, V), dtype=np.int64)
    # per chunk of voxels: class counts [chunk, L] from one bincount over all maps, then the k
    # largest by repeated argmax (the first maximum: ties go to the lower class index, as a stable
    # sort would). Memory O(chunk * (L + N)), time O(N V + k V L); sorting the [N, V] ids along
    # N instead took minutes for 40 maps of a 1 mm template grid.
    step = max(1, 2_000_000 // L)
    for v0 in range(0, V, step):
        v1 = min(v0 + step, V)
        offs = np.arange(v1 - v0, dtype=np.int64) * L
        keys = np.concatenate([offs + c[v0:v1] for c in flat])
        counts = np.bincount(keys, minlength=(v1 - v0) * L).reshape(v1 - v0, L)
        rows = np.arange(v1 - v0)
        for j in range(k):
            best = counts.argmax(1)
            top_idx[j, v0:v1] = best
            top_cnt[j, v0:v1] = counts[rows, best]
            counts[rows, best] = -1
    total = top_cnt.sum(0, keepdims=True)
    prob = (top_cnt / np.maximum(total, 1)).astype(np.float16)
    top_idx[top_cnt == 0] = 0
    idx_dtype = np.uint8 if L <= 256 else np.int16
    return SparseAtlas(torch.from_numpy(top_idx.astype(idx_dtype).reshape(k, *shape)),
                       torch.from_numpy(prob.reshape(k, *shape)), L)
