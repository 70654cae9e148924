"""Drop-in for DeepMind's ``surface_distance`` (0.1): the same functions, dicts and numbers.

Change ``import surface_distance`` to ``from spatialseg_fast.metrics import surface_distance``.
``compute_surface_distances`` runs spatialseg_fast's surface-distance kernel with the library's
surface (``surface="corner"``): points on the grid of voxel corners whose 2x2x2 (2D: 2x2)
neighbourhood is partly inside the mask, each weighted by the area (2D: length) of its marching-
cubes surface element, distances between those points in mm. The area table is derived from the
geometry in ``spatialseg_fast/ops/_surfels.py`` and checked against the library's in the tests.
The reductions are the library's formulas on the returned dict:

- ``compute_average_surface_distance`` -> (mean gt->pred, mean pred->gt), area-weighted;
- ``compute_robust_hausdorff(d, percent)`` -> max of the two directed area-weighted percentiles,
  no interpolation (the first sorted distance whose cumulative area share reaches percent/100);
- ``compute_surface_overlap_at_tolerance`` / ``compute_surface_dice_at_tolerance`` -> the area
  share of surface within ``tolerance_mm`` of the other surface (each way / both pooled);
- ``compute_dice_coefficient`` -> volumetric Dice.

Empty masks, as the library documents them (the library itself raises AttributeError on these
paths under NumPy 2, which removed ``np.Inf``/``np.NaN``; here they return what it documents):
both masks empty -> four empty arrays, and then the means and surface Dice are nan (0/0) and the
robust Hausdorff is inf; one mask empty -> its lists are empty and every distance of the other
is inf, so the means are (nan, inf) or (inf, nan), the robust Hausdorff inf and the surface Dice
0; ``compute_dice_coefficient`` of two empty masks is nan.
Inputs must be bool numpy arrays (ValueError otherwise, with the library's message).
"""
from __future__ import annotations

import numpy as np

from ..ops.surface_distances import surface_distances
from ._crop import crop_to_union

__all__ = [
    "compute_surface_distances",
    "compute_average_surface_distance",
    "compute_robust_hausdorff",
    "compute_surface_overlap_at_tolerance",
    "compute_surface_dice_at_tolerance",
    "compute_dice_coefficient",
]


def _check_bool_array(name, array):
    if not isinstance(array, np.ndarray):
        raise ValueError(f"The argument {name!r} should be a numpy array, not a {type(array)}")
    if array.dtype != bool:
        raise ValueError(f"The argument {name!r} should be a numpy array of type bool, not {array.dtype}")


def compute_surface_distances(mask_gt, mask_pred, spacing_mm):
    """Distances from every surface element of each mask to the other mask's surface.

    mask_gt, mask_pred: 2D or 3D bool numpy arrays; spacing_mm: one spacing per axis (mm).
    Returns {"distances_gt_to_pred", "distances_pred_to_gt", "surfel_areas_gt",
    "surfel_areas_pred"}: float64 arrays, each direction sorted by (distance, area)."""
    _check_bool_array("mask_gt", mask_gt)
    _check_bool_array("mask_pred", mask_pred)
    if not len(mask_gt.shape) == len(mask_pred.shape) == len(spacing_mm):
        raise ValueError(
            f"The arguments must be of compatible shape. Got mask_gt with {mask_gt.ndim} dimensions "
            f"({mask_gt.shape}) and mask_pred with {mask_pred.ndim} dimensions ({mask_pred.shape}), "
            f"while the spacing_mm was {len(spacing_mm)} elements.")
    if len(spacing_mm) not in (2, 3):
        raise ValueError(f"Only 2D and 3D masks are supported, not {len(spacing_mm)}D.")
    if mask_gt.shape != mask_pred.shape:
        raise ValueError(f"mask_gt and mask_pred must have the same shape; got {mask_gt.shape} and {mask_pred.shape}")
    empty = np.zeros(0)
    if not (mask_gt.any() or mask_pred.any()):
        return {"distances_gt_to_pred": empty, "distances_pred_to_gt": empty.copy(),
                "surfel_areas_gt": empty.copy(), "surfel_areas_pred": empty.copy()}
    gt, pred = crop_to_union(mask_gt, mask_pred)
    d = surface_distances(pred.view(np.uint8), gt.view(np.uint8), labels=[1], spacing=spacing_mm,
                          surface="corner")
    area_gt, area_pred = d.ref_areas[0], d.pred_areas[0]
    gt_to_pred, pred_to_gt = d.ref_to_pred[0], d.pred_to_ref[0]
    if len(area_gt) == 0 or len(area_pred) == 0:  # the other mask has no surface: infinitely far
        gt_to_pred, pred_to_gt = np.full(len(area_gt), np.inf), np.full(len(area_pred), np.inf)
    order_gt = np.lexsort((area_gt, gt_to_pred))
    order_pred = np.lexsort((area_pred, pred_to_gt))
    return {
        "distances_gt_to_pred": gt_to_pred[order_gt],
        "distances_pred_to_gt": pred_to_gt[order_pred],
        "surfel_areas_gt": area_gt[order_gt],
        "surfel_areas_pred": area_pred[order_pred],
    }


def _unpack(surface_distances):
    return (surface_distances["distances_gt_to_pred"], surface_distances["distances_pred_to_gt"],
            surface_distances["surfel_areas_gt"], surface_distances["surfel_areas_pred"])


def compute_average_surface_distance(surface_distances):
    """(area-weighted mean distance gt -> pred, pred -> gt), in mm."""
    d_gp, d_pg, a_g, a_p = _unpack(surface_distances)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.sum(d_gp * a_g) / np.sum(a_g), np.sum(d_pg * a_p) / np.sum(a_p))


def _weighted_percentile(distances, areas, percent):
    if len(distances) == 0:
        return np.inf
    share = np.cumsum(areas) / np.sum(areas)
    idx = np.searchsorted(share, percent / 100.0)
    return distances[min(idx, len(distances) - 1)]


def compute_robust_hausdorff(surface_distances, percent):
    """max of the two directed area-weighted `percent`-th percentiles (no interpolation), in mm."""
    d_gp, d_pg, a_g, a_p = _unpack(surface_distances)
    return max(_weighted_percentile(d_gp, a_g, percent), _weighted_percentile(d_pg, a_p, percent))


def compute_surface_overlap_at_tolerance(surface_distances, tolerance_mm):
    """(area share of the gt surface within tolerance_mm of the predicted one, and vice versa)."""
    d_gp, d_pg, a_g, a_p = _unpack(surface_distances)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.sum(a_g[d_gp <= tolerance_mm]) / np.sum(a_g), np.sum(a_p[d_pg <= tolerance_mm]) / np.sum(a_p))


def compute_surface_dice_at_tolerance(surface_distances, tolerance_mm):
    """Surface Dice: area of both surfaces within tolerance_mm of the other / total area, in [0, 1]."""
    d_gp, d_pg, a_g, a_p = _unpack(surface_distances)
    overlap = np.sum(a_g[d_gp <= tolerance_mm]) + np.sum(a_p[d_pg <= tolerance_mm])
    with np.errstate(invalid="ignore", divide="ignore"):
        return overlap / (np.sum(a_g) + np.sum(a_p))


def compute_dice_coefficient(mask_gt, mask_pred):
    """Volumetric Dice 2|gt & pred| / (|gt| + |pred|); nan when both masks are empty."""
    volume_sum = mask_gt.sum() + mask_pred.sum()
    if volume_sum == 0:
        return np.nan
    return 2 * (mask_gt & mask_pred).sum() / volume_sum
