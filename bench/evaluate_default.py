"""Accuracy of a trained model on the test pseudo-subjects and on the held-out ICBM 2009c subject.

    python bench/evaluate_default.py [--model PATH] [--test 20] [--precision fp32] [--per-structure OUT.csv]

Segments (dense engine, model=None uses the shipped weights) the paper's 20 test pseudo-subjects
of the CAT12 cohort (datasets.paper_split("test"), in template space) and the held-out ICBM 2009c
T1 with the CAT12 labels, evaluates each with spatialseg_fast.metrics.evaluate (Dice, Hausdorff,
the paper's MSD) over the 134 structures, and prints per set the mean +- sd over subjects of the
per-subject mean over structures, plus the time per subject. --per-structure writes the mean over
the test subjects of each structure's Dice/HD/MSD (and the ICBM subject's) to a CSV file.
"""
from __future__ import annotations

import argparse
import csv
import math
import time

import numpy as np

from spatialseg_fast import segment
from spatialseg_fast.datasets import label_table, load_source
from spatialseg_fast.datasets.cohort import paper_split
from spatialseg_fast.metrics import evaluate
from spatialseg_fast.model import load_default_model, load_model

METRICS = ("dice", "hausdorff", "msd")


def score(model, subject, precision: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    pred = segment(subject.image, model, precision=precision)
    seconds = time.perf_counter() - t0
    return metrics_of(model, pred, subject.labels), seconds


def metrics_of(model, pred, truth) -> dict:
    values = [v for v in model.config.output_values() if v != 0]
    table = evaluate(pred, truth, spacing=(1.0, 1.0, 1.0), labels=values, metrics=METRICS)
    return {m: table.column(m) for m in METRICS}


def atlas_only(model, subject) -> np.ndarray:
    """The baseline without any image information: each brain voxel gets the atlas's most
    frequent class (the model's own atlas, built from the training labels)."""
    values = np.asarray(model.config.output_values())
    top = values[model.atlas.index[0].numpy().astype(np.int64)]
    return np.where(subject.image != 0, top, 0).astype(np.uint8)


def summarise(name: str, rows: list[dict], seconds: list[float]) -> str:
    parts = []
    for m in METRICS:
        per_subject = [float(np.mean(r[m][np.isfinite(r[m])])) for r in rows]
        parts.append(f"{m} {np.mean(per_subject):.4f} +- {np.std(per_subject):.4f}")
    return f"{name:<34} n={len(rows):<3} " + "  ".join(parts) + f"   {np.mean(seconds):.1f} s/subject"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model file (default: the shipped weights)")
    parser.add_argument("--test", type=int, default=20, help="test pseudo-subjects (default 20, the paper's)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (the shipped model's: 0)")
    parser.add_argument("--per-structure", help="write per-structure means to this CSV")
    args = parser.parse_args(argv)
    model = load_model(args.model) if args.model else load_default_model()
    values, names = label_table()
    sets = {}
    test = paper_split("test", args.seed)[: args.test]
    icbm = load_source("icbm2009c")
    for title, subjects in (("CAT12 test pseudo-subjects", test), ("ICBM 2009c (held-out template)", [icbm])):
        rows, seconds, baseline = [], [], []
        for s in subjects:
            r, dt = score(model, s, args.precision)
            rows.append(r)
            seconds.append(dt)
            baseline.append(metrics_of(model, atlas_only(model, s), s.labels))
            print(f"  {s.name}: Dice {np.nanmean(r['dice']):.4f}  HD {np.nanmean(r['hausdorff'][np.isfinite(r['hausdorff'])]):.2f}"
                  f"  MSD {np.nanmean(r['msd'][np.isfinite(r['msd'])]):.3f}  ({dt:.1f} s)", flush=True)
        sets[title] = rows
        print(summarise(title, rows, seconds), flush=True)
        print(summarise("  atlas only (no image)", baseline, [0.0]), flush=True)
    if args.per_structure:
        with open(args.per_structure, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["label", "name", "test_dice", "test_hausdorff", "test_msd", "icbm_dice", "icbm_hausdorff", "icbm_msd"])
            test_rows, icbm_row = sets["CAT12 test pseudo-subjects"], sets["ICBM 2009c (held-out template)"][0]
            for i, (v, n) in enumerate(zip(values[1:], names[1:])):
                def mean(m):
                    x = np.array([r[m][i] for r in test_rows])
                    x = x[np.isfinite(x)]
                    return float(x.mean()) if len(x) else math.nan
                w.writerow([v, n, *(f"{mean(m):.4f}" for m in METRICS), *(f"{icbm_row[m][i]:.4f}" for m in METRICS)])


if __name__ == "__main__":
    main()
