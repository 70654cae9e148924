"""Drop-in for MONAI's functional metrics (MONAI 1.6.1): ``compute_hausdorff_distance``,
``compute_average_surface_distance``, ``compute_dice``.

Same signatures (the euclidean distance metric), same return type and shape (a float32 tensor
[B, C], C without the background channel unless ``include_background``), same numbers, computed by
spatialseg_fast's surface-distance kernel. One-hot channels that do not overlap (the usual case)
are evaluated as one label map in a single call instead of one call per channel. Change the import
line and nothing else.

MONAI's conventions, reproduced: a channel's foreground is where it equals 1; borders come from one
face-connected erosion (image edge = background); distances are computed in float64 and returned
as float32 before any reduction; ``percentile`` uses ``torch.quantile`` (linear) on each direction
and the result is the larger of the two directed values (``directed=True``: prediction -> reference
only); the average surface distance is one direction (prediction -> reference) unless
``symmetric=True``, which pools both. Empty masks: an empty reference or prediction gives infinite
distances for every border voxel of the other (so HD and ASD are inf, a percentile of several
infs is nan), both empty give nan; ``compute_dice`` with ``ignore_empty=True`` gives nan when the
reference is empty. Not supported (ValueError): ``distance_metric`` other than "euclidean",
``ignore_index``, ``compute_dice(per_component=True)``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..ops.surface_distances import surface_distances
from ._crop import crop_to_union


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _spacing_list(spacing, batch_size: int, img_dim: int):
    """MONAI's prepare_spacing: None / a number / one sequence / one sequence per batch item."""
    if spacing is None or isinstance(spacing, (int, float)):
        return [None if spacing is None else (float(spacing),) * img_dim] * batch_size
    seq = list(spacing)
    if seq and isinstance(seq[0], (Sequence, np.ndarray)):
        if len(seq) != batch_size or any(len(s) != img_dim for s in seq):
            raise ValueError(f"spacing per batch item must be {batch_size} sequences of {img_dim} numbers; got {spacing}")
        return [tuple(float(v) for v in s) for s in seq]
    if len(seq) != img_dim:
        raise ValueError(f"if `spacing` is a sequence of numbers, it should have same length as image dim ({img_dim}), got {spacing}.")
    return [tuple(float(v) for v in seq)] * batch_size


def _prepare(y_pred, y, include_background: bool, distance_metric: str, ignore_index):
    if distance_metric != "euclidean":
        raise ValueError(f"spatialseg_fast.metrics.monai supports distance_metric='euclidean' only; got {distance_metric!r}")
    if ignore_index is not None:
        raise ValueError("spatialseg_fast.metrics.monai does not support ignore_index")
    yp, yt = _as_tensor(y_pred).float(), _as_tensor(y).float()
    if not include_background:
        yp, yt = yp[:, 1:], yt[:, 1:]
    if yt.shape != yp.shape:
        raise ValueError(f"y_pred and y should have same shapes, got {yp.shape} and {yt.shape}.")
    if yp.ndim not in (4, 5):
        raise ValueError(f"y_pred must be [B, C, H, W] or [B, C, H, W, D]; got shape {tuple(yp.shape)}")
    return yp.cpu(), yt.cpu()


def _channel_distances(yp: torch.Tensor, yt: torch.Tensor, spacing):
    """Per channel of one batch item: (pred->ref, ref->pred, pred border count, ref border count)."""
    fp, ft = (yp == 1), (yt == 1)
    C = fp.shape[0]
    if C > 1 and int(fp.sum(0).max()) <= 1 and int(ft.sum(0).max()) <= 1:
        # non-overlapping channels: one label map, one call for all of them
        codes = torch.arange(1, C + 1, dtype=torch.int32).view(C, *([1] * (fp.ndim - 1)))
        lp, lt = (fp * codes).sum(0, dtype=torch.int32), (ft * codes).sum(0, dtype=torch.int32)
        d = surface_distances(lp.numpy(), lt.numpy(), labels=list(range(1, C + 1)), spacing=spacing)
        return [(d.pred_to_ref[c], d.ref_to_pred[c], int(d.counts[c, 4]), int(d.counts[c, 3])) for c in range(C)]
    out = []
    for c in range(C):
        p, t = crop_to_union(fp[c].numpy(), ft[c].numpy())
        d = surface_distances(p.view(np.uint8), t.view(np.uint8), labels=[1], spacing=spacing)
        out.append((d.pred_to_ref[0], d.ref_to_pred[0], int(d.counts[0, 4]), int(d.counts[0, 3])))
    return out


def _directed(dist: np.ndarray, n_src: int, n_dst: int) -> torch.Tensor:
    """MONAI's get_surface_distance for one direction, as float32: with an empty destination
    border every source border voxel is inf; with an empty source but a non-empty destination,
    MONAI returns inf for each destination border voxel."""
    if n_dst == 0:
        return torch.full((n_src,), float("inf"))
    if n_src == 0:
        return torch.full((n_dst,), float("inf"))
    return torch.from_numpy(dist).to(torch.float32)


def compute_hausdorff_distance(y_pred, y, include_background: bool = False, distance_metric: str = "euclidean",
                               percentile: float | None = None, directed: bool = False, spacing=None,
                               ignore_index: int | None = None) -> torch.Tensor:
    """Hausdorff distance (or its percentile) per batch item and class: float32 [B, C]."""
    yp, yt = _prepare(y_pred, y, include_background, distance_metric, ignore_index)
    B, C = yp.shape[:2]
    spacings = _spacing_list(spacing, B, yp.ndim - 2)
    hd = torch.empty((B, C), dtype=torch.float)
    if percentile and not 0 <= percentile <= 100:
        raise ValueError(f"percentile should be a value between 0 and 100, get {percentile}.")
    for b in range(B):
        for c, (p2r, r2p, n_p, n_r) in enumerate(_channel_distances(yp[b], yt[b], spacings[b])):
            parts = [_directed(p2r, n_p, n_r)] + ([] if directed else [_directed(r2p, n_r, n_p)])
            values = []
            for d in parts:
                if d.shape == (0,):
                    values.append(torch.tensor(float("nan")))
                elif not percentile:
                    values.append(d.max())
                else:
                    values.append(torch.quantile(d, percentile / 100))
            hd[b, c] = torch.max(torch.stack(values))
    return hd


def compute_average_surface_distance(y_pred, y, include_background: bool = False, symmetric: bool = False,
                                     distance_metric: str = "euclidean", spacing=None,
                                     ignore_index: int | None = None) -> torch.Tensor:
    """Average surface distance per batch item and class: float32 [B, C]."""
    yp, yt = _prepare(y_pred, y, include_background, distance_metric, ignore_index)
    B, C = yp.shape[:2]
    spacings = _spacing_list(spacing, B, yp.ndim - 2)
    asd = torch.empty((B, C), dtype=torch.float32)
    for b in range(B):
        for c, (p2r, r2p, n_p, n_r) in enumerate(_channel_distances(yp[b], yt[b], spacings[b])):
            parts = [_directed(p2r, n_p, n_r)] + ([_directed(r2p, n_r, n_p)] if symmetric else [])
            d = torch.cat(parts)
            asd[b, c] = float("nan") if d.numel() == 0 else d.mean()
    return asd


def compute_dice(y_pred, y, include_background: bool = True, ignore_empty: bool = True, num_classes: int | None = None,
                 per_component: bool = False, ignore_index: int | None = None) -> torch.Tensor:
    """Dice per batch item and class: float32 [B, C] (one-hot inputs, or class indices with num_classes)."""
    if per_component or ignore_index is not None:
        raise ValueError("spatialseg_fast.metrics.monai.compute_dice supports neither per_component nor ignore_index")
    yp, yt = _as_tensor(y_pred), _as_tensor(y)
    n = yp.shape[1] if num_classes is None else num_classes
    if yp.shape[1] == 1 and n > 1:  # class indices
        yp = torch.nn.functional.one_hot(yp[:, 0].long(), n).movedim(-1, 1)
    if yt.shape[1] == 1 and n > 1:
        yt = torch.nn.functional.one_hot(yt[:, 0].long(), n).movedim(-1, 1)
    yp, yt = yp.float(), yt.float()
    first = 0 if include_background else 1
    out = torch.empty((yp.shape[0], n - first), dtype=torch.float32)
    dims = tuple(range(1, yp.ndim - 1))
    for c in range(first, n):
        p, t = yp[:, c].bool(), yt[:, c]
        y_o = t.sum(dim=dims)
        inter = (t * p).sum(dim=dims)
        p_o = p.float().sum(dim=dims)
        for b in range(yp.shape[0]):
            if y_o[b] > 0:
                out[b, c - first] = (2.0 * inter[b]) / (y_o[b] + p_o[b])
            elif ignore_empty:
                out[b, c - first] = float("nan")
            else:
                out[b, c - first] = 1.0 if y_o[b] + p_o[b] <= 0 else 0.0
    return out


__all__ = ["compute_hausdorff_distance", "compute_average_surface_distance", "compute_dice"]
