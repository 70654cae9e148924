"""bf16 against fp32 on the held-out subjects: what does `--precision bf16` change? (issue 17)

    python bench/precision_agreement.py [--model PATH] [--icbm 5] [--cat12 3] [--cache DIR]

Runs bench/heldout_warped.py twice on the same subjects and model, `--precision fp32` and
`--precision bf16` (both cached per model file, so a model already scored in fp32 is only
segmented again in bf16), then prints per subject the share of brain voxels labelled the same and
the mean Dice / HD / MSD of each precision, and the mean over each set. The issue's bar for making
bf16 the default where the CPU has a bf16 unit: labels equal on >= 99.9% of brain voxels and the
same mean Dice to 3 decimals. Agreement is counted on the engine's labels (before the cleanup)
over the subject's non-zero voxels; the metrics are those heldout_warped.py prints (after it).
The seconds are the engine's time per subject as cached, so a precision scored earlier (another
machine, thread count or load) keeps its old seconds: clear --cache for a timing, and only trust
it on a quiet machine with a bf16 unit (elsewhere torch emulates bf16, far slower than fp32).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from heldout_warped import SEEDS, cache_stem
from heldout_warped import main as heldout_main
from spatialseg_fast.datasets import load_source
from spatialseg_fast.datasets.variability import HELDOUT, make_wide_subject
from spatialseg_fast.precision import cpu_bf16_unit

PRECISIONS = ("fp32", "bf16")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model file (default: the shipped weights)")
    parser.add_argument("--icbm", type=int, default=5)
    parser.add_argument("--cat12", type=int, default=3)
    parser.add_argument("--cache", default=str(Path(__file__).parent / ".heldout_cache"))
    args = parser.parse_args(argv)
    common = ["--icbm", str(args.icbm), "--cat12", str(args.cat12), "--cache", args.cache]
    if args.model:
        common += ["--model", args.model]
    runs = {p: heldout_main([*common, "--precision", p]) for p in PRECISIONS}
    print(f"\nbf16 unit of this CPU: {cpu_bf16_unit() or 'none (bf16 is emulated)'}")
    result = {}
    for source, n in (("icbm2009c", args.icbm), ("cat12", args.cat12)):
        if n <= 0:
            continue
        base = load_source(source)
        rows = []
        print(f"{source}: {'subject':<24} {'equal':>8} | {'fp32 Dice/HD/MSD':>22} | {'bf16 Dice/HD/MSD':>22} | seconds fp32/bf16")
        for i in range(n):
            key = f"{source}-{SEEDS[source]}-{i}"
            brain = make_wide_subject(base, SEEDS[source], i, HELDOUT).image != 0
            preds = {p: np.load(Path(args.cache) / f"{cache_stem(args.model, p)}-{key}.npz")["pred"] for p in PRECISIONS}
            equal = float((preds["fp32"][brain] == preds["bf16"][brain]).mean())
            scores = {p: runs[p]["sets"][source]["rows"][i] for p in PRECISIONS}
            rows.append({"equal": equal, **{p: scores[p]["model"] for p in PRECISIONS},
                         "seconds": {p: scores[p]["seconds"] for p in PRECISIONS}})
            cells = [f"{s['model']['dice']:.4f} {s['model']['hausdorff']:6.2f} {s['model']['msd']:.3f}".rjust(22)
                     for s in scores.values()]
            print(f"  {key:<30} {100 * equal:7.3f}% | {cells[0]} | {cells[1]} | "
                  + "/".join(f"{s['seconds']:.0f}" for s in scores.values()), flush=True)
        mean = {p: {m: float(np.mean([r[p][m] for r in rows])) for m in ("dice", "hausdorff", "msd")} for p in PRECISIONS}
        worst = min(r["equal"] for r in rows)
        print(f"  mean: labels equal on {100 * np.mean([r['equal'] for r in rows]):.3f}% of brain voxels "
              f"(worst subject {100 * worst:.3f}%); Dice fp32 {mean['fp32']['dice']:.4f} bf16 {mean['bf16']['dice']:.4f}, "
              f"HD {mean['fp32']['hausdorff']:.2f} / {mean['bf16']['hausdorff']:.2f}, "
              f"MSD {mean['fp32']['msd']:.3f} / {mean['bf16']['msd']:.3f}")
        result[source] = {"rows": rows, "mean": mean, "worst_equal": worst}
    return result


if __name__ == "__main__":
    main()
