"""Exact surface distances between a predicted and a reference label map, all labels in one call.

For each label l, with X = {ref == l} and Y = {pred == l}:
- border(S): voxels of S with a neighbour outside S (``connectivity`` 1 = faces ... ndim = all;
  outside the image counts as outside, as in medpy's and MONAI's erosion);
- ``ref_to_pred``: for each border voxel of X (C order), the Euclidean distance in mm between voxel
  centres to the nearest border voxel of Y; ``pred_to_ref`` the other way round (empty when either
  set is empty);
- counts |X|, |Y|, |X & Y| (Dice) and the two border sizes.
With ``surface="corner"`` the surface is DeepMind surface-distance's instead: points on the grid
of voxel corners whose 2x2(x2) neighbourhood is partly inside the set, each weighted by its
marching-cubes surface area (2D: contour length; ``ref_areas``/``pred_areas``), see ``_surfels``.
Reductions (Hausdorff, percentiles, directed means, Dice) are methods of the result.

The C++ kernel has two exact strategies: per label, an EDT (Felzenszwalb-Huttenlocher, separable,
anisotropic) on the union of the label's two bounding boxes — every feature point lies inside it,
so the crop is exact — labels in parallel; or, for many labels filling the volume, one pass that
marks every voxel's border bits and a nearest-border search per border voxel over offsets sorted by
distance (csrc/core/surface_distances.hpp). The torch reference measures brute-force nearest distances between the
border voxel sets (chunked ``cdist`` in float64): obviously right, and the fallback.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._backend import extension, resolve_backend, resolve_threads
from ._checks import as_tensor


@dataclass
class SurfaceDistances:
    labels: np.ndarray
    """[L] label values, in the order of every per-label field."""
    counts: np.ndarray
    """[L, 5] int64: |ref == l|, |pred == l|, intersection, border voxels of ref, of pred."""
    ref_to_pred: list
    """L float64 arrays: distance (mm) from each border voxel of the reference to the prediction's border."""
    pred_to_ref: list
    """L float64 arrays: from each border voxel of the prediction to the reference's border."""
    spacing: tuple
    ref_areas: list | None = None
    """surface="corner" only: L float64 arrays, the area (mm^2; 2D: length, mm) of each border point."""
    pred_areas: list | None = None

    # -- reductions (nan where a map lacks the label; see metrics for each library's convention)
    def dice(self) -> np.ndarray:
        """2 |X & Y| / (|X| + |Y|); nan when the label is in neither map."""
        c = self.counts.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c[:, 0] + c[:, 1] > 0, 2 * c[:, 2] / (c[:, 0] + c[:, 1]), np.nan)

    def _per_label(self, fn, *arrays_lists) -> np.ndarray:
        out = np.full(len(self.labels), np.nan)
        for i, arrays in enumerate(zip(*arrays_lists)):
            if all(len(a) for a in arrays):
                out[i] = fn(*arrays)
        return out

    def hausdorff(self) -> np.ndarray:
        """max of the two directed maxima (nan when either map lacks the label)."""
        return self._per_label(lambda a, b: max(a.max(), b.max()), self.ref_to_pred, self.pred_to_ref)

    def directed_max(self, direction: str = "pred_to_ref") -> np.ndarray:
        return self._per_label(np.max, self._direction(direction))

    def directed_mean(self, direction: str = "pred_to_ref") -> np.ndarray:
        return self._per_label(np.mean, self._direction(direction))

    def directed_percentile(self, q: float, direction: str = "pred_to_ref", method: str = "linear") -> np.ndarray:
        return self._per_label(lambda a: np.percentile(a, q, method=method), self._direction(direction))

    def pooled_percentile(self, q: float, method: str = "linear") -> np.ndarray:
        """q-th percentile of both directions' distances pooled (medpy's hd95 convention)."""
        return self._per_label(lambda a, b: np.percentile(np.concatenate([a, b]), q, method=method),
                               self.ref_to_pred, self.pred_to_ref)

    def msd(self) -> np.ndarray:
        """The paper's mean surface distance: (mean ref->pred + mean pred->ref) / 2."""
        return self._per_label(lambda a, b: 0.5 * (a.mean() + b.mean()), self.ref_to_pred, self.pred_to_ref)

    def assd(self) -> np.ndarray:
        """Average symmetric surface distance: mean of both directions' distances pooled."""
        return self._per_label(lambda a, b: (a.sum() + b.sum()) / (len(a) + len(b)), self.ref_to_pred, self.pred_to_ref)

    def _direction(self, direction: str):
        if direction == "pred_to_ref":
            return self.pred_to_ref
        if direction == "ref_to_pred":
            return self.ref_to_pred
        raise ValueError(f"direction must be 'pred_to_ref' or 'ref_to_pred'; got {direction!r}")


# -- input handling ------------------------------------------------------------------------------
def _label_map(x, name: str) -> torch.Tensor:
    t = as_tensor(x, name)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    if t.is_floating_point() or t.is_complex():
        if t.is_floating_point() and t.numel() and bool(torch.isfinite(t).all()) and bool((t == t.round()).all()):
            t = t.to(torch.int64)
        else:
            raise ValueError(f"{name} must hold integer labels; got {str(t.dtype).removeprefix('torch.')} with non-finite or non-integer values")
    if t.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D label map; got shape {tuple(t.shape)}")
    return t


def check_pair(pred, ref, spacing, connectivity):
    p, r = _label_map(pred, "pred"), _label_map(ref, "ref")
    if tuple(p.shape) != tuple(r.shape):
        raise ValueError(f"pred and ref must have the same shape; got {tuple(p.shape)} and {tuple(r.shape)}")
    ndim = p.ndim
    if spacing is None:
        sp = (1.0,) * ndim
    else:
        try:
            sp = tuple(float(s) for s in (spacing.tolist() if isinstance(spacing, torch.Tensor) else np.atleast_1d(spacing)))
        except (TypeError, ValueError):
            raise ValueError(f"spacing must be {ndim} positive numbers (mm); got {spacing!r}") from None
        if len(sp) == 1:
            sp = sp * ndim
        if len(sp) != ndim or not all(math.isfinite(s) and s > 0 for s in sp):
            raise ValueError(f"spacing must be {ndim} positive finite numbers (mm); got {spacing!r}")
    if not isinstance(connectivity, (int, np.integer)) or not 1 <= connectivity <= ndim:
        raise ValueError(f"connectivity must be an integer from 1 (faces) to {ndim} (all neighbours); got {connectivity!r}")
    return p, r, sp, int(connectivity)


_SMALL = 1 << 24  # label values below this are looked up in a table


def _encode(p: torch.Tensor, r: torch.Tensor, labels):
    """(ref, pred as int32 numpy maps, lut: value -> id or -1, values: id -> value, label list).

    Label values in [0, 2^24) go through a lookup table the kernel reads directly (no remapped
    copy of the maps); anything else is first remapped to ids. labels=None: every non-zero value
    present in either map (found by the kernel's counts for small values)."""
    pa, ra = p.detach().cpu().numpy(), r.detach().cpu().numpy()
    lo, hi = min(int(pa.min()), int(ra.min())), max(int(pa.max()), int(ra.max()))
    small = lo >= 0 and hi < _SMALL
    if labels is None:
        if small and hi < 4096:
            lab = np.arange(1, hi + 1, dtype=np.int64)  # filtered to the present ones afterwards
        elif small and hi < (1 << 20):
            # only the values present: the kernel's per-label buffers scale with the number of ids
            present = (np.bincount(pa.ravel(), minlength=hi + 1) + np.bincount(ra.ravel(), minlength=hi + 1)) > 0
            lab = np.flatnonzero(present[1:]).astype(np.int64) + 1
        else:
            lab = np.unique(np.concatenate([np.unique(pa), np.unique(ra)]))
            lab = lab[lab != 0].astype(np.int64)
    else:
        lab = labels
    if small and (len(lab) == 0 or (lab.min() >= 0 and lab.max() < _SMALL)):
        size = max(hi, int(lab.max()) if len(lab) else 0) + 1
        lut = np.full(size, -1, dtype=np.int32)
        lut[lab] = np.arange(len(lab), dtype=np.int32)
        return np.ascontiguousarray(ra, dtype=np.int32), np.ascontiguousarray(pa, dtype=np.int32), lut, lab.astype(np.int32), lab
    order = np.argsort(lab, kind="stable")
    sorted_labels = lab[order]

    def ids(a):
        pos = np.clip(np.searchsorted(sorted_labels, a), 0, max(len(lab) - 1, 0))
        hit = (sorted_labels[pos] == a) if len(lab) else np.zeros(a.shape, bool)
        return np.where(hit, order[pos], -1).astype(np.int32)

    ident = np.arange(len(lab), dtype=np.int32)
    return ids(ra), ids(pa), ident, ident.copy(), lab


def _device_ids(p: torch.Tensor, r: torch.Tensor, labels):
    """int64 id maps [D, H, W] (a 2D map as [1, H, W]) on the maps' device, and the label list."""
    if labels is None:
        values = torch.unique(torch.cat([torch.unique(p), torch.unique(r)]))
        labels = values[values != 0].cpu().numpy().astype(np.int64)
    lab_t = torch.as_tensor(labels, dtype=torch.int64, device=p.device)
    sorted_lab, order = torch.sort(lab_t, stable=True)

    def ids(t):
        t = t.to(torch.int64)
        t = t[None] if t.ndim == 2 else t
        if len(labels) == 0:
            return torch.full_like(t, -1)
        pos = torch.searchsorted(sorted_lab, t.reshape(-1)).clamp(max=len(labels) - 1)
        hit = sorted_lab[pos] == t.reshape(-1)
        return torch.where(hit, order[pos], -1).view(t.shape).contiguous()

    return ids(r), ids(p), labels


def _as3d(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a[None] if a.ndim == 2 else a)


# -- reference -------------------------------------------------------------------------------------
def _border(mask: torch.Tensor, connectivity: int) -> torch.Tensor:
    """Voxels of `mask` ([D, H, W] bool) with a neighbour outside it (outside the image counts)."""
    padded = F.pad(mask.to(torch.float32)[None, None], (1, 1, 1, 1, 1, 1), value=0.0)[0, 0]
    D, H, W = mask.shape
    inside = torch.ones_like(mask)
    for a in (-1, 0, 1):
        for b in (-1, 0, 1):
            for c in (-1, 0, 1):
                m = abs(a) + abs(b) + abs(c)
                if m == 0 or m > connectivity:
                    continue
                inside &= padded[1 + a : 1 + a + D, 1 + b : 1 + b + H, 1 + c : 1 + c + W] > 0
    return mask & ~inside


def _corner_codes(mask: torch.Tensor, ndim: int) -> torch.Tensor:
    """Code of every point of the voxel-corner grid ([D+1, H+1, W+1]; 2D: [1, H+1, W+1]) of `mask`
    ([D, H, W] bool): bit 1 << (7 - (4a + 2b + c)) set when voxel p - 1 + (a, b, c) is inside."""
    m = mask.to(torch.int64)
    if ndim == 2:
        m = F.pad(m[0], (1, 1, 1, 1))[None]
        H, W = mask.shape[1:]
        return sum(m[:, b : b + H + 1, c : c + W + 1] << (3 - (2 * b + c)) for b in (0, 1) for c in (0, 1))
    m = F.pad(m, (1, 1, 1, 1, 1, 1))
    D, H, W = mask.shape
    return sum(m[a : a + D + 1, b : b + H + 1, c : c + W + 1] << (7 - (4 * a + 2 * b + c))
               for a in (0, 1) for b in (0, 1) for c in (0, 1))


def _nearest(src: torch.Tensor, dst: torch.Tensor, block: int = 4096) -> torch.Tensor:
    out = torch.empty(len(src), dtype=torch.float64)
    for i in range(0, len(src), block):
        # direct differences, not the |x|^2 + |y|^2 - 2xy matrix product (1e-7 rounding)
        out[i : i + block] = torch.cdist(src[i : i + block], dst, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    return out


def surface_distances_ref(ref: np.ndarray, pred: np.ndarray, lut: np.ndarray, values: np.ndarray, spacing,
                          connectivity: int, ndim: int, corner_area: np.ndarray | None = None):
    """Plain-torch reference with the kernel's inputs (int32 maps, value -> id table, id -> value):
    (counts [L, 5], ref_to_pred, pred_to_ref, ref_areas, pred_areas); corner_area (code -> area)
    selects the corner-grid surface, else the area lists are empty."""
    def ids(a):
        a = _as3d(a).astype(np.int64)
        inside = (a >= 0) & (a < len(lut))
        return torch.from_numpy(np.where(inside, lut[np.clip(a, 0, len(lut) - 1)], -1))

    num_labels = len(values)
    r, p = ids(ref), ids(pred)
    sp3 = torch.tensor(((1.0,) if ndim == 2 else ()) + tuple(spacing), dtype=torch.float64)
    if corner_area is not None:
        return _corner_ref(r, p, num_labels, sp3, ndim, torch.from_numpy(np.asarray(corner_area, dtype=np.float64)))
    if ndim == 2:
        # no neighbours along the dummy axis: pad it with copies so it never makes a border
        r, p = r.expand(3, *r.shape[1:]).contiguous(), p.expand(3, *p.shape[1:]).contiguous()
    counts = np.zeros((num_labels, 5), dtype=np.int64)
    a_list, b_list = [], []
    for l in range(num_labels):
        X, Y = r == l, p == l
        bX, bY = _border(X, connectivity), _border(Y, connectivity)
        if ndim == 2:
            X, Y, bX, bY = X[1:2], Y[1:2], bX[1:2], bY[1:2]
        counts[l] = [int(X.sum()), int(Y.sum()), int((X & Y).sum()), int(bX.sum()), int(bY.sum())]
        if counts[l, 3] == 0 or counts[l, 4] == 0:
            a_list.append(np.zeros(0))
            b_list.append(np.zeros(0))
            continue
        cx, cy = bX.nonzero().to(torch.float64) * sp3, bY.nonzero().to(torch.float64) * sp3
        a_list.append(_nearest(cx, cy).numpy())
        b_list.append(_nearest(cy, cx).numpy())
    return counts, a_list, b_list, [np.zeros(0)] * num_labels, [np.zeros(0)] * num_labels


def _corner_ref(r, p, num_labels, sp3, ndim, area):
    full = 255 if ndim == 3 else 15
    counts = np.zeros((num_labels, 5), dtype=np.int64)
    out = [[], [], [], []]
    for l in range(num_labels):
        X, Y = r == l, p == l
        cX, cY = _corner_codes(X, ndim), _corner_codes(Y, ndim)
        bX, bY = (cX != 0) & (cX != full), (cY != 0) & (cY != full)
        counts[l] = [int(X.sum()), int(Y.sum()), int((X & Y).sum()), int(bX.sum()), int(bY.sum())]
        empty = counts[l, 3] == 0 or counts[l, 4] == 0
        px, py = bX.nonzero().to(torch.float64) * sp3, bY.nonzero().to(torch.float64) * sp3
        out[0].append(np.zeros(0) if empty else _nearest(px, py).numpy())
        out[1].append(np.zeros(0) if empty else _nearest(py, px).numpy())
        out[2].append(area[cX[bX]].numpy())
        out[3].append(area[cY[bY]].numpy())
    return (counts, *out)


# -- dispatcher -----------------------------------------------------------------------------------
_STRATEGIES = {"auto": 0, "boxes": 1, "search": 2}


def surface_distances(pred, ref, *, labels: Sequence[int] | None = None, spacing=None, connectivity: int = 1,
                      surface: str = "voxel", backend: str = "auto", num_threads: int | None = None,
                      strategy: str = "auto") -> SurfaceDistances:
    """Border-to-border distances of every requested label of two label maps, in one call.

    pred, ref: 2D or 3D integer label maps of the same shape (numpy, torch CPU or CUDA tensors;
        CUDA tensors use the Triton kernel, brute-force nearest border voxel per label).
    labels: labels to evaluate (default: every non-zero label present in either map), in order.
    spacing: voxel size in mm per axis (default 1). connectivity: 1 (faces, the default of medpy
        and MONAI) to ndim (all neighbours) for the border definition.
    surface: "voxel" (border voxels, distances between voxel centres: medpy, MONAI, the paper) or
        "corner" (DeepMind surface-distance's area-weighted points on the voxel-corner grid; sets
        ref_areas/pred_areas; connectivity unused; computed on the CPU for CUDA tensors too).
    backend: "auto" | "cpp" | "triton" | "torch". num_threads: C++ threads (None: torch's count).
    strategy (C++ only; the same numbers up to rounding, ~1e-15): "boxes" = each label's EDTs on its bounding box,
        "search" = one pass over the whole volume, then a nearest-border search by increasing
        distance per border voxel (voxel surfaces only); "auto" takes the search when the labels'
        boxes cover more than 15% of the volume (a parcellation), the boxes otherwise
        (bench/RESULTS.md has the crossover). Ignored by the torch and Triton backends.
    """
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(_STRATEGIES)}; got {strategy!r}")
    p, r, sp, conn = check_pair(pred, ref, spacing, connectivity)
    if surface not in ("voxel", "corner"):
        raise ValueError(f"surface must be 'voxel' or 'corner'; got {surface!r}")
    if surface == "corner" and strategy == "search":
        raise ValueError("strategy='search' works on border voxels only; surface='corner' uses the boxes (strategy='auto')")
    if labels is None:
        lab = None
    else:
        lab = np.atleast_1d(np.asarray(labels))
        if lab.size == 0:
            raise ValueError("labels is empty: give at least one label, or None for every label present")
        if lab.ndim != 1 or lab.dtype.kind not in "iu":
            raise ValueError(f"labels must be a list of integers; got {labels!r}")
        lab = lab.astype(np.int64)
        if len(np.unique(lab)) != len(lab):
            raise ValueError("labels must not repeat")
    if r.device != p.device:
        raise ValueError(f"pred and ref must be on the same device; got {p.device} and {r.device}")
    chosen = resolve_backend(backend, p.device)
    ndim = p.ndim
    corner_area = None
    if surface == "corner":
        if backend == "triton":
            raise ValueError("surface='corner' has no Triton kernel; use backend='auto', 'cpp' or 'torch'")
        if chosen == "triton":
            chosen = resolve_backend("auto", torch.device("cpu"))
        from ._surfels import surfel_areas

        corner_area = surfel_areas(sp)
    if chosen == "triton":
        from ..kernels.surface_distances import surface_distances_triton

        ref_ids, pred_ids, lab = _device_ids(p, r, lab)
        counts, a, b = surface_distances_triton(ref_ids, pred_ids, len(lab), ((1.0,) if ndim == 2 else ()) + tuple(sp), conn, ndim)
        return _result(counts, a, b, None, None, lab, labels, sp)
    ref_map, pred_map, lut, values, lab = _encode(p, r, lab)
    ext = extension() if chosen == "cpp" else None
    if ext is not None:
        sp3 = ((1.0,) if ndim == 2 else ()) + tuple(sp)
        area_arg = np.zeros(0) if corner_area is None else corner_area
        counts, a, b, ra, pa = ext.surface_distances(_as3d(ref_map), _as3d(pred_map), lut, values, sp3, conn, ndim,
                                                     resolve_threads(num_threads), area_arg, _STRATEGIES[strategy])
    else:
        counts, a, b, ra, pa = surface_distances_ref(ref_map, pred_map, lut, values, sp, conn, ndim, corner_area)
    if corner_area is None:
        ra = pa = None
    return _result(counts, a, b, ra, pa, lab, labels, sp)


def _result(counts, a, b, ra, pa, lab, labels, sp) -> SurfaceDistances:
    counts = np.asarray(counts)
    fields = [[np.asarray(x) for x in f] if f is not None else None for f in (a, b, ra, pa)]
    if labels is None:  # keep the labels present in either map
        keep = np.flatnonzero(counts[:, 0] + counts[:, 1] > 0)
        lab, counts = lab[keep], counts[keep]
        fields = [[f[i] for i in keep] if f is not None else None for f in fields]
    a, b, ra, pa = fields
    return SurfaceDistances(labels=np.asarray(lab, dtype=np.int64), counts=counts, ref_to_pred=a, pred_to_ref=b,
                            spacing=tuple(sp), ref_areas=ra, pred_areas=pa)
