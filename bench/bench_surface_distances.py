"""Benchmark the evaluator: all labels, all five metrics, against the libraries users run today.

pytest mode:  pytest bench/bench_surface_distances.py --benchmark-only   (a 96^3 pair, ours only)
script mode:  python bench/bench_surface_distances.py [--size 256] [--skip medpy monai ...] [--crossover]
              one run on a 256^3 pair with 135 labels (134 structures + background) and spacing
              (1, 1, 1.2): times spatialseg_fast.metrics.evaluate (cpp) against a per-label scipy
              loop cropped to bounding boxes, medpy (on bounding-box crops: the same numbers as on
              whole volumes, ~64x faster), MONAI (looped per label: its one-hot input for all labels
              would need ~9 GB) and DeepMind surface-distance (and the same loop through our
              drop-in spatialseg_fast.metrics.surface_distance), checks that the numbers agree and
              prints seconds and ratios.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pytest

from spatialseg_fast.metrics import evaluate

SPACING = (1.0, 1.0, 1.2)


def make_pair(size: int = 256, structures: int = 134, seed: int = 0):
    """A parcellated ellipsoid 'brain' (Voronoi cells of random seeds) and a prediction whose
    seeds are jittered by ~2 voxels and whose brain outline differs slightly."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    c = (size - 1) / 2
    radii = np.array([0.43, 0.47, 0.39]) * size
    seeds = []
    while len(seeds) < structures:
        p = rng.uniform(0, size, 3)
        if (((p - c) / radii) ** 2).sum() < 0.8:
            seeds.append(p)
    seeds = np.array(seeds)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1).reshape(-1, 3)
    inside = lambda r: ((((grid - c) / r) ** 2).sum(1) < 1)

    def parcellate(points, r):
        out = np.zeros(len(grid), np.int16)
        m = inside(r)
        out[m] = cKDTree(points).query(grid[m])[1] + 1
        return out.reshape((size,) * 3)

    ref = parcellate(seeds, radii)
    pred = parcellate(seeds + rng.normal(0, 2.0, seeds.shape), radii * rng.uniform(0.98, 1.02, 3))
    return pred, ref


def scipy_cropped(pred, ref, labels, spacing):
    """Per label: medpy's borders and scipy's EDT on the union bounding box (exact)."""
    from scipy import ndimage

    out = {}
    for label in labels:
        X, Y = ref == label, pred == label
        idx = np.argwhere(X | Y)
        lo, hi = idx.min(0), idx.max(0) + 1
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        # outside the box nothing carries the label, so a crop padded with background erodes
        # exactly like the whole volume (and the image edge counts as background either way)
        Xc, Yc = np.pad(X[box], 1), np.pad(Y[box], 1)
        bX, bY = Xc ^ ndimage.binary_erosion(Xc), Yc ^ ndimage.binary_erosion(Yc)
        a = ndimage.distance_transform_edt(~bY, sampling=spacing)[bX]
        b = ndimage.distance_transform_edt(~bX, sampling=spacing)[bY]
        both = np.concatenate([a, b])
        out[label] = (max(a.max(), b.max()), np.percentile(both, 95), 0.5 * (a.mean() + b.mean()), both.mean())
    return out


def medpy_cropped(pred, ref, labels, spacing):
    from medpy.metric import binary

    out = {}
    for label in labels:
        X, Y = ref == label, pred == label
        idx = np.argwhere(X | Y)
        box = tuple(slice(a, b) for a, b in zip(idx.min(0), idx.max(0) + 1))
        x, y = np.pad(X[box], 1), np.pad(Y[box], 1)
        out[label] = (binary.hd(y, x, spacing), binary.hd95(y, x, spacing), binary.assd(y, x, spacing), binary.dc(y, x))
    return out


def monai_loop(pred, ref, labels, spacing):
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    out = {}
    for label in labels:
        yp = torch.from_numpy(pred == label)[None, None].float()
        yt = torch.from_numpy(ref == label)[None, None].float()
        hd = compute_hausdorff_distance(yp, yt, include_background=True, spacing=spacing)
        asd = compute_average_surface_distance(yp, yt, include_background=True, symmetric=True, spacing=spacing)
        out[label] = (float(hd), float(asd))
    return out


def surface_distance_loop(pred, ref, labels, spacing, sd=None):
    if sd is None:
        import surface_distance as sd

    out = {}
    for label in labels:
        d = sd.compute_surface_distances(ref == label, pred == label, spacing)
        out[label] = (sd.compute_robust_hausdorff(d, 100), sd.compute_average_surface_distance(d))
    return out


@pytest.fixture(scope="module")
def small_pair():
    return make_pair(96, 40)


def test_evaluate_all_labels(benchmark, small_pair):
    pred, ref = small_pair
    table = benchmark(lambda: evaluate(pred, ref, spacing=SPACING))
    assert len(table.labels) == 40


def crossover(size: int) -> None:
    """Seconds of each strategy for the first k structures of the pair, and what 'auto' took."""
    from spatialseg_fast.ops import surface_distances

    pred, ref = make_pair(size)
    labels = sorted((set(np.unique(ref)) | set(np.unique(pred))) - {0})
    print(f"{'labels':>6} {'boxes s':>8} {'search s':>9} {'auto s':>7}  box volume / volume")
    for k in (1, 2, 4, 8, 16, 32, 64, len(labels)):
        sub = labels[:k]
        times = {}
        for strategy in ("boxes", "search", "auto"):
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                surface_distances(pred, ref, labels=sub, spacing=SPACING, backend="cpp", strategy=strategy)
                best = min(best, time.perf_counter() - t0)
            times[strategy] = best
        boxes = 0
        for label in sub:
            idx = np.argwhere((ref == label) | (pred == label))
            boxes += np.prod(idx.max(0) - idx.min(0) + 1)
        print(f"{k:>6} {times['boxes']:>8.3f} {times['search']:>9.3f} {times['auto']:>7.3f}  {boxes / pred.size:.3f}",
              flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--skip", nargs="*", default=[], help="peers to skip: scipy medpy monai surface-distance")
    parser.add_argument("--crossover", action="store_true",
                        help="only time the kernel's two strategies for 1..all labels (where 'auto' should switch)")
    args = parser.parse_args(argv)
    if args.crossover:
        return crossover(args.size)
    t0 = time.perf_counter()
    pred, ref = make_pair(args.size)
    labels = sorted((set(np.unique(ref)) | set(np.unique(pred))) - {0})
    print(f"pair {args.size}^3, {len(labels)} structures + background, spacing {SPACING}; made in {time.perf_counter() - t0:.1f} s")
    def timed(strategy):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            table = evaluate(pred, ref, spacing=SPACING, strategy=strategy)
            best = min(best, time.perf_counter() - t0)
        return best, table

    best, table = timed("auto")
    rows_by_label = table.to_dict()
    ours = {int(l): rows_by_label[int(l)] for l in labels}
    rows = [("spatialseg_fast evaluate (cpp), 5 metrics", best, "")]
    for strategy in ("boxes", "search"):  # the kernel's two strategies, same numbers
        dt, other = timed(strategy)
        same = float(np.nanmax(np.abs(np.where(np.isfinite(other.values), other.values - table.values, 0))))
        rows.append((f"  strategy={strategy}", dt, f"max |difference| from auto {same:.1e}"))
    peers = [("scipy EDT per label, cropped", "scipy", scipy_cropped, lambda r, o: max(abs(r[0] - o["hausdorff"]), abs(r[1] - o["hd95"]), abs(r[2] - o["msd"]), abs(r[3] - o["assd"]))),
             ("medpy hd/hd95/assd/dc, cropped", "medpy", medpy_cropped, lambda r, o: max(abs(r[0] - o["hausdorff"]), abs(r[1] - o["hd95"]), abs(r[2] - o["assd"]), abs(r[3] - o["dice"]))),
             ("MONAI HD + symmetric ASD, per label", "monai", monai_loop, lambda r, o: max(abs(r[0] - o["hausdorff"]), abs(r[1] - o["assd"]))),
             ("surface-distance HD + mean, per label", "surface-distance", surface_distance_loop, lambda r, o: abs(r[0] - o["hausdorff"]))]
    for title, key, fn, diff in peers:
        if key in args.skip:
            continue
        if key == "surface-distance":  # our drop-in first: same loop, import line changed
            from spatialseg_fast.metrics import surface_distance as drop_in

            t0 = time.perf_counter()
            dropped = surface_distance_loop(pred, ref, labels, SPACING, sd=drop_in)
            rows.append(("  spatialseg_fast.metrics.surface_distance, same loop", time.perf_counter() - t0, ""))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            try:
                result = fn(pred, ref, labels, SPACING)
            except ImportError as exc:
                rows.append((title, float("nan"), f"not installed ({exc})"))
                continue
            dt = time.perf_counter() - t0
        worst = max(diff(result[l], ours[int(l)]) for l in labels)
        note = f"max |difference| {worst:.2e}"
        if key == "surface-distance":
            drop_worst = max(max(abs(a - b) for a, b in zip(np.hstack(result[l]), np.hstack(dropped[l]))) for l in labels)
            note += f"; drop-in vs library {drop_worst:.2e} (HD, both means)"
        rows.append((title, dt, note))
    print(f"{'method':<44} {'seconds':>8} {'ours is':>9}  check")
    for title, dt, note in rows:
        ratio = f"{dt / best:>8.1f}x" if dt == dt and title != rows[0][0] and not title.startswith("  strategy") else f"{'':>9}"
        print(f"{title:<44} {dt:>8.2f} {ratio}  {note}")


if __name__ == "__main__":
    main()
