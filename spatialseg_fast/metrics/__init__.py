"""The evaluator: Dice, Hausdorff, percentile Hausdorff, MSD and ASSD for every label in one pass.

Definitions (X = reference == l, Y = prediction == l; border = voxels with a face neighbour
outside the set, the image edge counting as outside; d = Euclidean distance in mm between voxel
centres; D_xy = {d(x, border Y) : x in border X}, D_yx likewise):

- ``dice``       2 |X & Y| / (|X| + |Y|)
- ``hausdorff``  max(max D_xy, max D_yx)
- ``hd95``       95th percentile of D_xy and D_yx pooled (linear interpolation; medpy's hd95);
                 any ``hdQ`` (e.g. ``hd99``) likewise
- ``msd``        (mean D_xy + mean D_yx) / 2, the paper's mean surface distance
- ``assd``       mean of D_xy and D_yx pooled (medpy's assd, MONAI's symmetric ASD)

A label missing from both maps gives nan everywhere; missing from one map gives Dice 0 and
infinite distances. The drop-in modules ``metrics.monai``, ``metrics.medpy`` and
``metrics.surface_distance`` follow their libraries' own conventions instead.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field

import numpy as np

from ..ops.surface_distances import SurfaceDistances, surface_distances
from ..volume import Volume

DEFAULT_METRICS = ("dice", "hausdorff", "hd95", "msd", "assd")
_PERCENTILE = re.compile(r"^hd(\d+(?:\.\d+)?)$")


@dataclass
class EvaluationTable:
    """Per-label results: one row per label, one column per metric."""

    labels: np.ndarray
    metrics: tuple
    values: np.ndarray
    """[L, M] float64."""
    names: tuple = field(default=())
    """Structure names per label, when known."""

    def column(self, metric: str) -> np.ndarray:
        return self.values[:, self.metrics.index(metric)]

    def to_dict(self) -> dict:
        """{label: {metric: value}} (names under "name" when known)."""
        out = {}
        for i, label in enumerate(self.labels.tolist()):
            row = {m: float(v) for m, v in zip(self.metrics, self.values[i])}
            if self.names:
                row = {"name": self.names[i], **row}
            out[label] = row
        return out

    def to_csv(self, path=None) -> str:
        """CSV text (label[, name], metrics...); also written to `path` when given."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["label", *(["name"] if self.names else []), *self.metrics])
        for i, label in enumerate(self.labels.tolist()):
            w.writerow([label, *([self.names[i]] if self.names else []), *(f"{v:.6g}" for v in self.values[i])])
        text = buf.getvalue()
        if path is not None:
            with open(path, "w", newline="") as f:
                f.write(text)
        return text

    def summary(self) -> dict:
        """{metric: (mean, sd, n)} over the labels with a finite value."""
        out = {}
        for j, m in enumerate(self.metrics):
            v = self.values[:, j]
            v = v[np.isfinite(v)]
            out[m] = (float(v.mean()) if len(v) else math.nan, float(v.std()) if len(v) else math.nan, int(len(v)))
        return out

    def summary_line(self) -> str:
        """Mean +- sd per metric over the labels with a finite value; where some have none (a
        structure missing from one map has infinite distances) the line says how many the mean
        leaves out, so a missed structure never passes for a good one."""
        return "  ".join(mean_line(m, self.values[:, j]) for j, m in enumerate(self.metrics))

    def __str__(self) -> str:
        head = f"{'label':>6} " + (f"{'name':<28} " if self.names else "") + " ".join(f"{m:>10}" for m in self.metrics)
        rows = [head]
        for i, label in enumerate(self.labels.tolist()):
            name = f"{self.names[i][:28]:<28} " if self.names else ""
            rows.append(f"{label:>6} {name}" + " ".join(f"{v:>10.4g}" for v in self.values[i]))
        rows.append("mean   " + self.summary_line())
        return "\n".join(rows)


def mean_line(metric: str, values: np.ndarray, what: str = "labels") -> str:
    """'hausdorff 2 +- 0' over the finite values, with ' (1 of 2 labels inf, left out)' when some are
    not finite, and '-' for the mean when none is."""
    values = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(values)
    kept = values[~bad]
    text = f"{metric} {kept.mean():.4g} +- {kept.std():.3g}" if len(kept) else f"{metric} -"
    if bad.any():
        kinds = sorted({"inf" if np.isinf(x) else "nan" for x in values[bad]})
        text += f" ({int(bad.sum())} of {len(values)} {what} {'/'.join(kinds)}, left out)"
    return text


def grid_difference(shape_a, affine_a, shape_b, affine_b) -> str | None:
    """None when two maps share a grid (shape, and affine to 1e-4 mm), else a one-line reason. For
    2D maps only the affine's first two columns and its origin count (the third axis has no extent)."""
    if tuple(shape_a) != tuple(shape_b):
        return f"their shapes differ ({tuple(shape_a)} / {tuple(shape_b)})"
    n = len(shape_a)
    cols = list(range(min(n, 3))) + [3]
    a, b = (np.asarray(x, dtype=np.float64)[:3][:, cols] for x in (affine_a, affine_b))
    if np.allclose(a, b, atol=1e-4):
        return None
    sa, sb = (np.linalg.norm(x[:, :-1], axis=0) for x in (a, b))
    if not np.allclose(sa, sb, atol=1e-4):
        what = f"voxel sizes differ ({', '.join(f'{x:g}' for x in sa)} / {', '.join(f'{x:g}' for x in sb)} mm)"
    elif not np.allclose(a[:, :-1], b[:, :-1], atol=1e-4):
        what = "their orientations differ"
    else:
        what = f"their origins differ by {np.linalg.norm(a[:, -1] - b[:, -1]):.3g} mm"
    return f"same shape {tuple(shape_a)} but {what}"


def _unpack(x):
    """(array or tensor, affine or None)."""
    return (x.data, x.affine) if isinstance(x, Volume) else (x, None)


def check_metrics(metrics) -> tuple:
    """The metric names as a tuple, or a ValueError naming the unknown one."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    for m in metrics:
        q = _PERCENTILE.match(m)
        if m not in ("dice", "hausdorff", "msd", "assd") and not (q and 0 <= float(q.group(1)) <= 100):
            raise ValueError(f"unknown metric {m!r}; choose from dice, hausdorff, hd95 (any hdQ, 0 <= Q <= 100), msd, assd")
    if not metrics:
        raise ValueError("metrics must name at least one metric")
    return metrics


def metric_values(d: SurfaceDistances, metric: str) -> np.ndarray:
    """One metric per label of a SurfaceDistances, with the evaluator's empty-set rules."""
    if metric == "dice":
        return d.dice()
    q = _PERCENTILE.match(metric)
    values = d.pooled_percentile(float(q.group(1))) if q else getattr(d, metric)()  # hausdorff, msd, assd
    one_missing = (d.counts[:, 0] > 0) != (d.counts[:, 1] > 0)
    values[one_missing] = math.inf
    return values


def evaluate(pred, ref, spacing=None, labels=None, metrics=DEFAULT_METRICS, *, connectivity: int = 1,
             names=None, backend: str = "auto", num_threads: int | None = None,
             strategy: str = "auto") -> EvaluationTable:
    """Per-label Dice / Hausdorff / HD95 / MSD / ASSD of a prediction against a reference.

    pred, ref: 2D/3D integer label maps (numpy, torch CPU/CUDA: CUDA tensors are evaluated by the
        Triton kernel on their GPU) or Volumes (spacing from the affine; both must be on the same grid). spacing: mm per axis for arrays (default 1).
    labels: labels to report (default: every non-zero label in either map).
    names: optional {label: name} or sequence indexed by label, for the table.
    strategy: the C++ kernel's strategy (ops.surface_distances: "auto", "boxes", "search"; the same
        numbers up to rounding).
    Returns an :class:`EvaluationTable` (labels as rows; to_dict, to_csv, summary).
    """
    metrics = check_metrics(metrics)
    p, pa = _unpack(pred)
    r, ra = _unpack(ref)
    if pa is not None or ra is not None:
        if pa is None or ra is None:
            raise ValueError("pass both pred and ref as Volumes, or neither")
        why = grid_difference(np.shape(p), pa, np.shape(r), ra)
        if why:
            raise ValueError(f"pred and ref are on different grids: {why}; resample one onto the other first")
        if spacing is not None:
            raise ValueError("spacing comes from the Volumes' affine; do not pass it too")
        spacing = Volume(np.zeros((1, 1, 1)), pa).spacing[: np.ndim(p)]
    d = surface_distances(p, r, labels=labels, spacing=spacing, connectivity=connectivity, backend=backend,
                          num_threads=num_threads, strategy=strategy)
    values = np.stack([metric_values(d, m) for m in metrics], axis=1) if len(d.labels) else np.zeros((0, len(metrics)))
    label_names = ()
    if names is not None:
        get = names.get if isinstance(names, dict) else (lambda k, default="": names[k] if 0 <= k < len(names) else default)
        label_names = tuple(str(get(int(k), "")) for k in d.labels)
    return EvaluationTable(labels=d.labels, metrics=metrics, values=values, names=label_names)


__all__ = ["DEFAULT_METRICS", "EvaluationTable", "check_metrics", "evaluate", "grid_difference", "mean_line", "metric_values"]
