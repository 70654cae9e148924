"""Clean a model's label map where a per-voxel classifier errs: stray islands and impossible places.

A per-voxel classifier makes isolated errors: a few voxels of a structure far from where it is.
They cost little Dice but set the Hausdorff distance, the *largest* surface distance, of both the
structure they are given to and, seen from its truth, the one they were taken from. Two rules, both
chosen on the validation pseudo-subjects, never on the held-out ones (bench/cleanup_choice.py,
bench/RESULTS.md):

- ``remove_outside_atlas``: a structure found where the model's probabilistic atlas gives it
  probability 0 takes the nearest label the atlas allows (a model trained with its position inputs
  dropped for most voxels can name a structure anywhere; the atlas says where it can be).
- ``remove_islands``: each structure keeps its largest 26-connected piece and every piece of at
  least ``keep_fraction`` of that size; the voxels of the other pieces take the label of the
  nearest kept voxel (background included). The brain structures of the label sets we ship are one
  piece each (of the 134 Neuromorphometrics structures on the CAT12 template, 126 are one
  26-connected piece; the other 8 are tiny ones whose extra pieces hold a few hundred voxels).

On 3 validation subjects (an image-first checkpoint's labels) the mean Hausdorff distance went from
13.06 mm to 10.23 with the islands rule at 0.3 (the best fraction of 0.02, 0.1, 0.3, 1), to 9.29
with the atlas rule, and 9.35 with both; Dice and MSD improved with each. Each takes about 1 s.
"""
from __future__ import annotations

import numpy as np

DEFAULT_KEEP_FRACTION = 0.3


def remove_islands(labels, *, keep_fraction: float = DEFAULT_KEEP_FRACTION, background: int = 0,
                   spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """A copy of the 3D integer label map `labels` with the small pieces of each label reassigned.

    keep_fraction: components at least this share of their label's largest component stay
        (0 keeps everything: nothing changes; 1 keeps only the largest, ties aside).
    background: the label left alone (its pieces are not structures).
    spacing: voxel size in mm, for "nearest kept voxel".
    """
    from scipy import ndimage

    lab = np.asarray(labels)
    if lab.ndim != 3 or lab.size == 0:
        raise ValueError(f"labels must be a non-empty 3D label map; got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be an integer label map; got dtype {lab.dtype}")
    if not 0 <= keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in [0, 1]; got {keep_fraction}")
    if keep_fraction == 0:
        return lab.copy()
    values = np.unique(lab)
    values = values[values != background]
    if len(values) == 0:
        return lab.copy()
    # find_objects needs labels 1..n: index the values present
    index = np.searchsorted(values, lab) + 1
    index[lab == background] = 0
    removed = np.zeros(lab.shape, dtype=bool)
    structure = np.ones((3, 3, 3), dtype=bool)
    for k, box in enumerate(ndimage.find_objects(index), start=1):
        if box is None:
            continue
        mine = index[box] == k
        pieces, n = ndimage.label(mine, structure)
        if n < 2:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        small = np.flatnonzero(sizes < keep_fraction * sizes.max()) + 1
        if len(small):
            removed[box] |= np.isin(pieces, small)
    return fill_nearest(lab, removed, spacing)


def fill_nearest(labels: np.ndarray, removed: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """A copy of `labels` where every `removed` voxel takes the label of the nearest voxel that is
    not removed (distances in mm with `spacing`)."""
    from scipy import ndimage

    out = labels.copy()
    if removed.any():
        # the nearest kept voxel, searched only around the removed ones
        lo = np.maximum(np.argwhere(removed).min(0) - 1, 0)
        hi = np.minimum(np.argwhere(removed).max(0) + 2, labels.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        sub = removed[box]
        if sub.all():  # nothing kept inside the box: widen it to the whole volume
            box, sub = (slice(None),) * labels.ndim, removed
        if sub.all():
            return out  # nothing kept anywhere
        nearest = ndimage.distance_transform_edt(sub, sampling=spacing, return_distances=False, return_indices=True)
        out[box] = np.where(sub, labels[box][tuple(nearest)], labels[box])
    return out


def outside_atlas(labels, atlas, label_values) -> np.ndarray:
    """Voxels whose (non-background) label the atlas gives probability 0 there: [D, H, W] bool.

    atlas: the model's atlas on the labels' grid: a SparseAtlas (its K most frequent classes per
    voxel) or a dense [L, D, H, W] tensor; label_values: the model's output label value of each
    class index. Labels that are not among label_values count as outside."""
    lab = np.asarray(labels)
    if tuple(atlas.shape[1:]) != lab.shape:
        raise ValueError(f"the atlas's grid {tuple(atlas.shape[1:])} is not the labels' grid {lab.shape}")
    lut = np.asarray(label_values, dtype=np.int64)
    supported = lab == lut[0]  # background is always allowed
    from .model.atlas import SparseAtlas

    if isinstance(atlas, SparseAtlas):
        index, prob = atlas.index.numpy(), atlas.prob.numpy()
        for k in range(index.shape[0]):
            supported |= (lut[index[k].astype(np.int64)] == lab) & (prob[k] > 0)
    else:
        dense = atlas.numpy() if hasattr(atlas, "numpy") else np.asarray(atlas)
        for c in range(1, len(lut)):
            here = lab == lut[c]
            supported[here] = dense[c][here] > 0
    return ~supported


def remove_outside_atlas(labels, atlas, label_values, *, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """A copy of `labels` where a structure found where the model's atlas never saw it (probability
    0 among the atlas's most frequent classes of that voxel) takes the nearest label that the atlas
    allows. The atlas is built from 40 subjects of the wide deformation distribution (3-4.5 mm mean
    displacement), so its support is broad: on the validation subjects ~1% of brain voxels fall
    outside it, and those set the Hausdorff distance (bench/cleanup_choice.py)."""
    lab = np.asarray(labels)
    return fill_nearest(lab, outside_atlas(lab, atlas, label_values), spacing)
