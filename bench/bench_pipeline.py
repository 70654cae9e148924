"""End to end: the demo subject through the whole pipeline, each stage's seconds (issue 17).

    python bench/bench_pipeline.py [--repeats 3] [--precision auto] [--threads N] [--work DIR]
    python bench/bench_pipeline.py --precisions      (fp32 vs bf16 on a slab: what bf16 gains and changes on this CPU)

The subject is `spatialseg demo`'s (the ICBM 2009c T1 warped by the held-out deformation, seed 4000,
written as a NIfTI file on the template grid). It goes through ``segment_file`` as `spatialseg
segment` runs it (load, register, resample, segment, map back) and its labels are written to disk
(write), once with registration and once with ``register=False`` (--no-register), alternating, each
`--repeats` times. Printed: the median seconds of every stage per mode, the engine's time
(segment), the share of everything else in it (registration + I/O + resampling; target <= 15%) and
the whole run (target <= 30 s at the default precision on a 2-core CPU).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

STAGES = ("load", "skull strip", "register", "resample", "segment", "map back", "write")


def make_demo_subject(folder: Path) -> Path:
    from spatialseg_fast.cli import DEMO_SEED
    from spatialseg_fast.datasets import load_source, template_grid
    from spatialseg_fast.datasets.variability import HELDOUT, make_wide_subject
    from spatialseg_fast.volume import Volume, save_volume

    subject = make_wide_subject(load_source("icbm2009c"), DEMO_SEED, 0, HELDOUT)
    path = folder / "demo_t1.nii.gz"
    save_volume(Volume(subject.image, template_grid()[1]), path)
    return path


def one_run(path: Path, out: Path, model, *, register: bool, precision: str, threads) -> dict:
    from spatialseg_fast.pipeline import segment_file
    from spatialseg_fast.volume import save_volume

    t0 = time.perf_counter()
    result = segment_file(path, model, register=register, precision=precision, threads=threads, skull_strip="no")
    t1 = time.perf_counter()
    save_volume(result.labels, out)
    t2 = time.perf_counter()
    stages = dict(result.stages)
    stages["write"] = t2 - t1
    stages["total"] = t2 - t0
    return stages


def compare_precisions(threads) -> None:
    """fp32 vs bf16 seconds and label agreement on the subject's brain voxels in 12 central slices."""
    import torch

    from spatialseg_fast import segment
    from spatialseg_fast.cli import DEMO_SEED
    from spatialseg_fast.datasets import load_source
    from spatialseg_fast.datasets.variability import HELDOUT, make_wide_subject
    from spatialseg_fast.model import load_default_model
    from spatialseg_fast.precision import auto_precision, cpu_bf16_unit

    model = load_default_model()
    image = make_wide_subject(load_source("icbm2009c"), DEMO_SEED, 0, HELDOUT).image
    mask = image != 0
    mid = mask.shape[2] // 2
    slab = np.zeros_like(mask)
    slab[:, :, mid - 6:mid + 6] = True
    mask &= slab
    print(f"bf16 unit: {cpu_bf16_unit() or 'none'}; auto picks {auto_precision(torch.device('cpu'))}; "
          f"{int(mask.sum()):,} brain voxels in 12 slices")
    out = {}
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        out[precision] = np.asarray(segment(image, model, mask=mask, precision=precision, threads=threads))
        print(f"  {precision}: {time.perf_counter() - t0:.1f} s", flush=True)
    same = (out["fp32"][mask] == out["bf16"][mask]).mean()
    print(f"labels equal on {100 * same:.2f}% of those voxels")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default=None, help="folder for the subject and the labels (default: a temporary one)")
    ap.add_argument("--precisions", action="store_true",
                    help="only time fp32 against bf16 on a 12-slice slab of the subject (what bf16 gains and changes on this CPU)")
    args = ap.parse_args()
    if args.precisions:
        return compare_precisions(args.threads)

    import spatialseg_fast
    from spatialseg_fast.model import load_default_model
    import torch

    from spatialseg_fast.precision import auto_precision

    model = load_default_model()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    work.mkdir(parents=True, exist_ok=True)
    path = make_demo_subject(work)
    info = spatialseg_fast.build_info()
    chosen = auto_precision(torch.device("cpu")) if args.precision == "auto" else args.precision
    print(f"demo subject {path}; precision {args.precision} -> {chosen}; {info['torch_threads']} torch threads")
    runs = {True: [], False: []}
    for r in range(args.repeats):
        for register in (True, False):
            stages = one_run(path, work / "labels.nii.gz", model, register=register, precision=args.precision,
                             threads=args.threads)
            runs[register].append(stages)
            print(f"  run {r + 1} {'registered' if register else '--no-register'}: "
                  + "  ".join(f"{k} {v:.1f}" for k, v in stages.items()), flush=True)
    print(f"\nmedian of {args.repeats} (seconds)")
    print(f"{'stage':<14}{'registered':>12}{'--no-register':>15}")
    med = {}
    for register in (True, False):
        keys = sorted({k for s in runs[register] for k in s})
        med[register] = {k: statistics.median(s.get(k, 0.0) for s in runs[register]) for k in keys}
    for k in (*STAGES, "total"):
        if k in med[True] or k in med[False]:
            a, b = med[True].get(k), med[False].get(k)
            print(f"{k:<14}{'' if a is None else f'{a:.2f}':>12}{'' if b is None else f'{b:.2f}':>15}")
    engine = med[True]["segment"]
    rest = med[True]["total"] - engine
    print(f"\nengine (segment) {engine:.1f} s; registration + I/O + resampling {rest:.1f} s = "
          f"{100 * rest / engine:.1f}% of it (target <= 15%); whole run {med[True]['total']:.1f} s (target <= 30 s)")


if __name__ == "__main__":
    main()
