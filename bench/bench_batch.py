"""Cohort throughput of spatialseg_fast.batch.segment_many: serial in this process vs a Dask
LocalCluster of 1 and of 2 worker processes, on the same small subjects.

    python bench/bench_batch.py                      # 8 subjects on a 3 mm grid (about 5 minutes on 2 cores)
    python bench/bench_batch.py --subjects 4 --voxel 4

The subjects: the held-out ICBM 2009c T1 (fetched once, cached) resampled to a `--voxel` mm grid,
turned into pseudo-subjects by make_cohort(space="native") (random affine, elastic warp, bias,
noise), each registered to the template in the per-subject flow. The model: the shipped network
(its trained weights) with its atlas and registration template rebuilt on that coarser grid, so a
subject costs what a 1 mm one costs per voxel, (3 mm)^3 fewer voxels.

Printed per mode: start-up (cluster and workers; the serial run has none), the run's wall time
(first subject handed out -> last one back), subjects per hour over the run, the per-subject flow's
own time (mean `seconds` of the results table), the engine's overhead per subject = (workers x run
wall - sum of per-subject times) / subjects (scheduling, result traffic, model loading, idle tail),
model loads per worker process and each worker's peak resident memory during a subject.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_data(work: Path, n: int, voxel: float, seed: int = 1):
    """(model path, [subject paths]): see the module doc."""
    from spatialseg_fast import save_model
    from spatialseg_fast.datasets import load_source
    from spatialseg_fast.datasets.atlas import build_atlas
    from spatialseg_fast.datasets.cohort import make_cohort
    from spatialseg_fast.datasets.templates import Subject
    from spatialseg_fast.model import load_default_model
    from spatialseg_fast.training.recipe import template_volume
    from spatialseg_fast.volume import Volume, resample, save_volume

    base = load_source("icbm2009c")
    step = float(voxel)
    shape = tuple(int(np.ceil(s / step)) for s in base.image.shape)
    affine = base.affine.copy()
    affine[:3, :3] = base.affine[:3, :3] * step
    affine[:3, 3] = base.affine[:3, 3] + base.affine[:3, :3] @ np.full(3, (step - 1) / 2)
    image = resample(Volume(base.image, base.affine), shape, affine).data.astype(np.float32)
    labels = resample(Volume(base.labels, base.affine), shape, affine, kind="label").data.astype(np.uint8)
    image[labels == 0] = 0.0
    coarse = Subject(image=image, labels=labels, affine=affine, name=f"icbm2009c-{voxel:g}mm")
    model = load_default_model()
    values = model.config.output_values()
    model.atlas = build_atlas([labels], values)
    model.template = template_volume(image, affine)
    path = work / "model.safetensors"
    save_model(model, path, metadata={**model.metadata, "template": {"shape": list(shape), "affine": affine.tolist()}})
    subjects = []
    for s in make_cohort(coarse, n, seed=seed, space="native"):
        p = work / f"sub-{len(subjects) + 1:02d}_T1w.nii.gz"
        save_volume(Volume(s.image, s.affine), p)
        subjects.append(p)
    return path, subjects


def measure(label: str, inputs, out: Path, model: Path, workers, threads: int) -> dict:
    from spatialseg_fast.batch import segment_many

    report = segment_many(inputs, out, workers=workers, model=model, threads=threads, skip_existing=False,
                          results=out.parent / f"{out.name}_results.csv")
    assert report.exit_code == 0, [r["error"] for r in report.rows if r["error"]]
    n = len(report.rows)
    seg = [float(r["seconds"]) for r in report.rows]
    per_worker = {}
    for r in report.rows:
        w = per_worker.setdefault(r["pid"], {"subjects": 0, "loads": 0, "load_s": 0.0, "peak_mb": 0.0})
        w["subjects"] += 1
        w["loads"] = max(w["loads"], r["model_loads"])
        w["load_s"] = max(w["load_s"], r["model_load_s"])
        w["peak_mb"] = max(w["peak_mb"], float(r["peak_rss_mb"] or 0))
    slots = report.workers if report.mode == "dask" else 1
    overhead = (slots * report.run_s - sum(seg)) / n
    return {"mode": label, "workers": slots, "threads": threads, "startup_s": report.startup_s, "run_s": report.run_s,
            "per_hour": 3600 * n / report.run_s, "seg_s": sum(seg) / n, "overhead_s": overhead,
            "overhead_pct": 100 * overhead / (sum(seg) / n), "per_worker": per_worker, "labels": out}


def same_labels(a: Path, b: Path) -> bool:
    import nibabel as nib

    names = sorted(p.name for p in a.glob("*_labels.nii.gz"))
    if names != sorted(p.name for p in b.glob("*_labels.nii.gz")):
        return False
    return all(np.array_equal(np.asanyarray(nib.load(str(a / x)).dataobj), np.asanyarray(nib.load(str(b / x)).dataobj))
               for x in names)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--voxel", type=float, default=3.0, help="subjects' voxel size in mm (default 3)")
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    args = ap.parse_args(argv)
    try:
        import distributed  # noqa: F401
    except ImportError:
        print('bench_batch: needs Dask: pip install "spatialseg_fast[cluster]"', file=sys.stderr)
        return 2
    import torch

    import spatialseg_fast

    cores = os.cpu_count() or 1
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_batch_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, inputs = make_data(work, args.subjects, args.voxel)
    print(f"spatialseg_fast {spatialseg_fast.__version__}, torch {torch.__version__}, distributed "
          f"{distributed.__version__}, {platform.processor() or platform.machine()}, {cores} cores; "
          f"{args.subjects} subjects on a {args.voxel:g} mm grid made in {time.perf_counter() - t0:.0f} s "
          f"(full network, registration included); load average {os.getloadavg()[0]:.1f} at the start")
    runs = [measure("serial, in-process", inputs, work / "serial", model, None, cores),
            measure("--workers 1 (Dask)", inputs, work / "workers1", model, 1, cores),
            measure("--workers 2 (Dask)", inputs, work / "workers2", model, 2, max(1, cores // 2))]
    print(f"load average {os.getloadavg()[0]:.1f} at the end (other work on this machine counts in every figure)")
    head = ("mode", "workers x threads", "start-up s", "run s", "subjects/h", "seg s/subject",
            "overhead s/subject", "model loads/worker", "model load s", "peak MB/worker")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in runs:
        w = list(r["per_worker"].values())
        loads = ", ".join(str(x["loads"]) for x in w)
        load_s = ", ".join("%.2f" % x["load_s"] for x in w)
        peaks = ", ".join("%.0f" % x["peak_mb"] for x in w)
        print(f"| {r['mode']} | {r['workers']} x {r['threads']} | {r['startup_s']:.1f} | {r['run_s']:.1f} | "
              f"{r['per_hour']:.0f} | {r['seg_s']:.2f} | {r['overhead_s']:.3f} ({r['overhead_pct']:.1f}%) | "
              f"{loads} | {load_s} | {peaks} |")
    base = runs[0]
    for r in runs[1:]:
        print(f"{r['mode']}: {r['per_hour'] / base['per_hour']:.2f}x the serial throughput; labels identical to "
              f"the serial run: {same_labels(base['labels'], r['labels'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
