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
    ids = np.stack(ids)  # [N, D, H, W]
    n = len(maps)
    k = min(k, n, L)
    # per voxel: counts of the classes present, via sorting the N ids
    flat = np.sort(ids.reshape(n, -1), axis=0)  # [N, V]
    V = flat.shape[1]
    top_idx = np.zeros((k, V), dtype=np.int64)
    top_cnt = np.zeros((k, V), dtype=np.int64)
    # run-length encode each column: a new run starts where the sorted id changes
    starts = np.ones_like(flat, dtype=bool)
    starts[1:] = flat[1:] != flat[:-1]
    run_id = np.cumsum(starts, axis=0) - 1  # [N, V] run number within its column
    counts = np.zeros((n, V), dtype=np.int64)
    np.add.at(counts, (run_id, np.broadcast_to(np.arange(V), (n, V))), 1)
    first = np.zeros((n, V), dtype=np.int64)
    first[run_id[starts], np.nonzero(starts)[1]] = flat[starts]
    order = np.argsort(-counts, axis=0, kind="stable")[:k]
    top_cnt = np.take_along_axis(counts, order, 0)
    top_idx = np.take_along_axis(first, order, 0)
    total = top_cnt.sum(0, keepdims=True)
    prob = (top_cnt / np.maximum(total, 1)).astype(np.float16)
    top_idx[top_cnt == 0] = 0
    idx_dtype = np.uint8 if L <= 256 else np.int16
    return SparseAtlas(torch.from_numpy(top_idx.astype(idx_dtype).reshape(k, *shape)),
                       torch.from_numpy(prob.reshape(k, *shape)), L)
