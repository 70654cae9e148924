"""Clean a model's label map where a per-voxel classifier errs: stray islands and impossible places.

A per-voxel classifier makes isolated errors: a few voxels of a structure far from where it is.
They cost little Dice but set the Hausdorff distance, the *largest* surface distance, of both the
structure they are given to and, seen from its truth, the one they were taken from. Two rules, both
chosen on the validation pseudo-subjects, never on the held-out ones (bench/cleanup_choice.py,
bench/RESULTS.md):

- ``remove_outside_atlas``: a structure found where the model's probabilistic atlas gives it
  probability 0 (or at most ``min_prob``) takes the label of the nearest voxel that keeps its own,
  if the atlas allows that label there, else the atlas's most probable label there (a model
  trained with its position inputs dropped for most voxels can name a structure anywhere; the
  atlas says where it can be).
- ``remove_islands``: each structure keeps its largest 26-connected piece and every piece of at
  least ``keep_fraction`` of that size; the voxels of the other pieces take the label of the
  nearest kept voxel (background included). The brain structures of the label sets we ship are one
  piece each (of the 134 Neuromorphometrics structures on the CAT12 template, 126 are one
  26-connected piece; the other 8 are tiny ones whose extra pieces hold a few hundred voxels).

On 3 validation subjects (an image-first checkpoint's labels) the mean Hausdorff distance went from
13.06 mm to 10.23 with the islands rule at 0.3 (the best fraction of 0.1, 0.3, 1), to 9.13 with the
atlas rule, and 9.24 with both; Dice and MSD improved with each and were best with the atlas rule
alone. So the pipeline runs the atlas rule for models with an atlas and the islands rule for models
without one. Each takes 1-2 s per brain.

The atlas rule's threshold (``min_prob``, ``--atlas-min-prob``): a structure counts as outside the
atlas where the atlas gives it probability <= min_prob. For that early checkpoint 0.25 gave the
best Dice (0.5686 -> 0.5716, HD 9.13 -> 8.37 mm; 0.3 the best HD, 8.29), but for the shipped
model (an average of later epochs, a better reader of the image) any threshold above 0 costs
Dice: 0.6094 / 8.41 mm at 0, 0.6075 / 8.29 at 0.1, 0.6056 / 8.23 at 0.15. So the default is 0;
a higher one trades a little Dice for a smaller Hausdorff distance.
"""
from __future__ import annotations

import numpy as np

DEFAULT_KEEP_FRACTION = 0.3
# a structure where the atlas gives it at most this probability counts as outside it: 0, only where
# the atlas never has it (a higher threshold trades Dice for Hausdorff distance, see module doc)
DEFAULT_ATLAS_MIN_PROB = 0.0


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
    not removed (distances in mm with `spacing`); unchanged when every voxel is removed."""
    from scipy import ndimage

    out = labels.copy()
    if not removed.any() or removed.all():
        return out
    # search only the removed voxels' bounding box plus a 1-voxel margin: the margin is all kept
    # voxels, and any kept voxel beyond it has a nearer one on the margin, so this is exact
    lo = np.maximum(np.argwhere(removed).min(0) - 1, 0)
    hi = np.minimum(np.argwhere(removed).max(0) + 2, labels.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = removed[box]
    nearest = ndimage.distance_transform_edt(sub, sampling=spacing, return_distances=False, return_indices=True)
    out[box] = np.where(sub, labels[box][tuple(nearest)], labels[box])
    return out


def _allowed(labels: np.ndarray, atlas, lut: np.ndarray, background_free: bool, min_prob: float) -> np.ndarray:
    """Voxels whose label has probability > `min_prob` in the atlas there (background always, if
    `background_free`)."""
    from .model.atlas import SparseAtlas

    # atlases store count/N in float16, so 0.3 is kept as 0.30005: the threshold is rounded the same
    # way, so that a threshold on an atlas value counts that value as outside for sparse and dense
    # atlases alike, whatever the dense one's dtype
    min_prob = float(np.float16(min_prob))
    ok = labels == lut[0] if background_free else np.zeros(labels.shape, dtype=bool)
    if isinstance(atlas, SparseAtlas):
        index, prob = atlas.index.numpy(), atlas.prob.numpy()  # (min_prob is exact in float16 now)
        for k in range(index.shape[0]):
            ok |= (lut[index[k].astype(np.int64)] == labels) & (prob[k] > min_prob)
    else:
        for c in range(len(lut)):
            here = labels == lut[c]
            if here.any():
                ok[here] |= _dense_class(atlas, c)[here] > min_prob
    return ok


def _dense_class(atlas, c: int) -> np.ndarray:
    plane = atlas[c]
    return plane.detach().cpu().float().numpy() if hasattr(plane, "detach") else np.asarray(plane, dtype=np.float32)


def _check_grid(labels: np.ndarray, atlas) -> None:
    if tuple(atlas.shape[1:]) != labels.shape:
        raise ValueError(f"the atlas's grid {tuple(atlas.shape[1:])} is not the labels' grid {labels.shape}")


def outside_atlas(labels, atlas, label_values, *, min_prob: float = DEFAULT_ATLAS_MIN_PROB) -> np.ndarray:
    """Voxels whose (non-background) label has probability <= `min_prob` in the atlas there
    (default DEFAULT_ATLAS_MIN_PROB, the pipeline's): [D, H, W] bool.

    atlas: the model's atlas on the labels' grid: a SparseAtlas (then "probability 0" means "not
    among the K most frequent classes it keeps for that voxel") or a dense [L, D, H, W] tensor;
    label_values: the model's output label value of each class index. Labels that are not among
    label_values count as outside."""
    lab = np.asarray(labels)
    _check_grid(lab, atlas)
    check_min_prob(min_prob)
    return ~_allowed(lab, atlas, np.asarray(label_values, dtype=np.int64), background_free=True, min_prob=min_prob)


def _top_class(atlas, lut: np.ndarray, where: np.ndarray) -> np.ndarray:
    """The atlas's most probable label value at the voxels `where` (a bool mask)."""
    from .model.atlas import SparseAtlas

    if isinstance(atlas, SparseAtlas):
        return lut[atlas.index[0].numpy()[where].astype(np.int64)]
    best = np.full(int(where.sum()), -1.0, dtype=np.float32)
    arg = np.zeros(int(where.sum()), dtype=np.int64)
    for c in range(len(lut)):
        p = _dense_class(atlas, c)[where]
        better = p > best
        best[better], arg[better] = p[better], c
    return lut[arg]


def check_min_prob(min_prob: float) -> None:
    """Raise ValueError unless `min_prob` is an atlas probability threshold in [0, 1)."""
    if not 0 <= min_prob < 1:
        raise ValueError(f"min_prob must be an atlas probability in [0, 1); got {min_prob}")


def remove_outside_atlas(labels, atlas, label_values, *, min_prob: float = DEFAULT_ATLAS_MIN_PROB,
                         spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """A copy of `labels` where a structure found where the model's atlas gives it probability <=
    `min_prob` (see outside_atlas; default 0) is replaced: by the label of the nearest voxel that
    keeps its own, when the atlas allows that label here too, else by the atlas's most probable
    label here. So every voxel ends with a label the atlas allows (background only where the atlas
    has background), unless min_prob > 0 and no label has more than min_prob there: then it takes
    the most probable one.

    The atlas is built from 40 subjects of the wide deformation distribution (3-4.5 mm mean
    displacement), so its support is broad: on the validation subjects ~1% of brain voxels fall
    outside it, and those set the Hausdorff distance (bench/cleanup_choice.py)."""
    lab = np.asarray(labels)
    _check_grid(lab, atlas)
    lut = np.asarray(label_values, dtype=np.int64)
    check_min_prob(min_prob)
    removed = ~_allowed(lab, atlas, lut, background_free=True, min_prob=min_prob)
    out = fill_nearest(lab, removed, spacing)
    still = removed & ~_allowed(out, atlas, lut, background_free=False, min_prob=min_prob)
    if still.any():
        out[still] = _top_class(atlas, lut, still).astype(out.dtype)
    return out
