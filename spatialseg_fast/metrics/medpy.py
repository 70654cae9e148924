"""Drop-in for ``medpy.metric.binary`` (medpy 0.5.2): ``dc``, ``hd``, ``hd95``, ``asd``, ``assd``.

Same signatures, same return types (numpy float64) and the same numbers (exact EDT like medpy's
scipy one), computed by spatialseg_fast's surface-distance kernel on the objects' bounding box
instead of whole-volume distance transforms. Change ``from medpy.metric.binary import hd95`` to
``from spatialseg_fast.metrics.medpy import hd95``.

medpy's conventions, reproduced: inputs are binary (0 = background, anything else = object);
borders are the voxels removed by one erosion with ``generate_binary_structure(ndim,
connectivity)``, the image edge counting as background; ``hd95`` is the 95th percentile (linear
interpolation) of both directions' distances pooled; ``asd`` is one direction (result -> reference);
``assd`` is the mean of both directions' distances pooled; an empty ``result`` or ``reference``
raises RuntimeError("The first/second supplied array does not contain any binary object.");
``dc`` of two empty masks is nan (numpy float division by zero, as medpy under NumPy 2).
Unlike medpy, only 2D and 3D inputs are supported (ValueError otherwise).
"""
from __future__ import annotations

import numpy as np

from ..ops.surface_distances import surface_distances
from ._crop import crop_to_union


def _binary(x) -> np.ndarray:
    a = np.atleast_1d(np.asarray(x).astype(np.bool_))
    if a.ndim not in (2, 3):
        raise ValueError(f"spatialseg_fast.metrics.medpy supports 2D and 3D arrays; got {a.ndim}D")
    return a


def _distances(result, reference, voxelspacing, connectivity):
    """(result -> reference, reference -> result) border distances, medpy's checks first."""
    r, ref = _binary(result), _binary(reference)
    if np.count_nonzero(r) == 0:
        raise RuntimeError("The first supplied array does not contain any binary object.")
    if np.count_nonzero(ref) == 0:
        raise RuntimeError("The second supplied array does not contain any binary object.")
    r, ref = crop_to_union(r, ref)
    # a scalar voxelspacing applies to every axis, as in medpy
    d = surface_distances(r.view(np.uint8), ref.view(np.uint8), labels=[1], spacing=voxelspacing, connectivity=connectivity)
    return d.pred_to_ref[0], d.ref_to_pred[0]


def dc(result, reference):
    """Dice coefficient of two binary objects."""
    result = np.atleast_1d(np.asarray(result).astype(np.bool_))
    reference = np.atleast_1d(np.asarray(reference).astype(np.bool_))
    intersection = np.count_nonzero(result & reference)
    size_i1, size_i2 = np.count_nonzero(result), np.count_nonzero(reference)
    try:
        return 2.0 * intersection / float(size_i1 + size_i2)
    except ZeroDivisionError:
        return 1.0


def hd(result, reference, voxelspacing=None, connectivity=1):
    """Hausdorff distance: max of the two directed maxima."""
    a, b = _distances(result, reference, voxelspacing, connectivity)
    return max(a.max(), b.max())


def hd95(result, reference, voxelspacing=None, connectivity=1):
    """95th percentile of both directions' surface distances pooled."""
    a, b = _distances(result, reference, voxelspacing, connectivity)
    return np.percentile(np.hstack((a, b)), 95)


def asd(result, reference, voxelspacing=None, connectivity=1):
    """Average surface distance from result's border to reference's border (one direction)."""
    a, _ = _distances(result, reference, voxelspacing, connectivity)
    return a.mean()


def assd(result, reference, voxelspacing=None, connectivity=1):
    """Average symmetric surface distance: mean of both directions' distances pooled."""
    a, b = _distances(result, reference, voxelspacing, connectivity)
    return np.concatenate([a, b]).mean()


__all__ = ["dc", "hd", "hd95", "asd", "assd"]
