"""An ablation like the paper's Table 1: every preset trained with the same budget, then tested.

    python bench/ablation.py OUT_DIR [--presets ...] [--epochs 6] [--steps-per-epoch 30] [--test 5]
                             [--precision P] [--lr LR] [--threads N] [--recipe paper|wide]
                             [--val-subjects 2] [--reference MODEL]

For each preset (basenet, basenet+dist, basenet+prob, basenet+dist+prob, full): trained from
scratch with the given budget, checkpoints in OUT_DIR/<preset>/, then the best checkpoint segments
the first --test test pseudo-subjects and the table prints Dice / Hausdorff / MSD (mean +- sd over test
subjects of the per-subject mean over the 134 structures) and the parameter count, so one can
see whether DistBranch cuts the Hausdorff distance as the paper reports. When a preset with a
ProbBranch is among them, a last row gives the atlas-only baseline (each voxel gets the training
atlas's most frequent class), the floor that those presets start from.

--recipe paper (default): the paper-split recipe (``spatialseg train``: dense mode on the 10
training pseudo-subjects, SGD, whole slabs), tested on the paper split's test subjects.
--recipe wide: the image-first recipe of the shipped model's second stage (``--cohort wide
--optimizer adam --box 48 --boxes-per-step 2 --sample-fraction 0.5 --position-dropout 0.7``, fp32,
lr --lr, by default 1e-3 here), validated on --val-subjects wide validation subjects and tested on
the wide distribution's test stream (training/recipe.py WIDE_SEEDS["test"]). Every preset gets
the same options and steps, but two of them only act where their branches are: position dropout
needs DistBranch or ProbBranch inputs, and sampling uncertain voxels more often needs an atlas, so
BaseNet and BaseNet+DistBranch sample uniformly.

--reference MODEL adds a row for a model trained otherwise (e.g. the shipped weights) and, when
no preset in the run has an atlas, takes the atlas-only row from its atlas.

Re-running skips the presets whose training finished (their best.safetensors exists and the run
reached its last epoch) and reuses their test scores (OUT_DIR/<preset>/scores.json, valid for the
same test subjects, precision and checkpoint file), so presets can be trained by several
processes at once (disjoint --presets, --threads 1 each: on a small CPU two single-threaded runs
finish in about the time of one two-threaded run) and a last call with all presets, once they
have finished, prints the whole table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from evaluate_default import METRICS, atlas_only, metrics_of, score  # noqa: E402

from spatialseg_fast._atomic import atomic_text  # noqa: E402
from spatialseg_fast.datasets import load_source  # noqa: E402
from spatialseg_fast.datasets.cohort import paper_split  # noqa: E402
from spatialseg_fast.model import PRESETS, load_model  # noqa: E402
from spatialseg_fast.training.loop import TrainOptions, saved_options  # noqa: E402
from spatialseg_fast.training.recipe import WIDE_SEEDS, train_default  # noqa: E402
from spatialseg_fast.training.stream import wide_cohort  # noqa: E402


def _test_scores(path: Path, test, metrics, key: dict) -> dict:
    """Per test subject, the mean over structures of each metric; cached in `path` (JSON) with the
    subjects' names and `key` (what else the scores depend on), reused only when both match."""
    stamp = {"subjects": [s.name for s in test], **key}
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
        except ValueError:
            cached = {}
        if cached.get("key") == stamp:
            return cached["scores"]
    results = [metrics(s) for s in test]
    per = {m: [float(np.mean(r[m][np.isfinite(r[m])])) for r in results] for m in METRICS}
    atomic_text(path, json.dumps({"key": stamp, "scores": per}, indent=1))
    return per


def _file_key(path: Path) -> dict:
    st = path.stat()
    return {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--presets", nargs="*", default=list(PRESETS),
                        help="presets to train and test (default: all; none with --reference: only that model)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps-per-epoch", type=int, default=30)
    parser.add_argument("--test", type=int, default=5)
    parser.add_argument("--precision", default=None, help="default: bf16 (paper), fp32 (wide)")
    parser.add_argument("--lr", type=float, default=None, help="default: 0.02 (paper), 1e-3 (wide)")
    parser.add_argument("--recipe", choices=("paper", "wide"), default="paper")
    parser.add_argument("--val-subjects", type=int, default=2, help="wide: validation subjects (default 2)")
    parser.add_argument("--reference", metavar="MODEL",
                        help="also test this model file (e.g. the shipped weights); its atlas gives the atlas-only "
                             "row when no trained preset has one")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    wide = args.recipe == "wide"
    args.precision = args.precision or ("fp32" if wide else "bf16")
    args.lr = args.lr if args.lr is not None else (1e-3 if wide else 0.02)
    options = TrainOptions(mode="dense", epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, slab=4,
                           precision=args.precision, lr=args.lr)
    extra = {}
    if wide:
        options = dataclasses.replace(options, cohort="wide", optimizer="adam", box=48, boxes_per_step=2,
                                      sample_fraction=0.5, position_dropout=0.7)
        extra = {"n_val": args.val_subjects}
        test = wide_cohort(load_source("cat12"), args.test, WIDE_SEEDS["test"])
    else:
        test = paper_split("test")[: args.test]
    rows, atlas_model = [], None
    for preset in args.presets:
        out = Path(args.out) / preset.replace("+", "_")
        best = out / "best.safetensors"
        if (out / "last.safetensors").is_file() and saved_options(out) != options:
            sys.exit(f"{out} holds a run with other options ({saved_options(out)}); give another OUT_DIR")
        finished = best.is_file() and load_model(out / "last.safetensors").metadata["training"]["epoch"] == args.epochs - 1
        t0 = time.perf_counter()
        if not finished:
            train_default(out, options, preset=preset, resume=(out / "last.safetensors").is_file(), progress=True, **extra)
        minutes = (time.perf_counter() - t0) / 60
        model = load_model(best)
        per = _test_scores(out / "scores.json", test, lambda s: score(model, s, args.precision)[0],
                           {"precision": args.precision, **_file_key(best)})
        rows.append((preset, model.inference_parameters(), per, minutes))
        print(f"{preset}: done ({minutes:.0f} min of training in this run)", flush=True)
        if model.atlas is not None:
            atlas_model, atlas_file = model, best
    if args.reference:  # a model trained otherwise (e.g. the shipped weights), on the same test subjects
        ref = Path(args.reference)
        model = load_model(ref)
        per = _test_scores(Path(args.out) / f"reference_{ref.stem}.json", test, lambda s: score(model, s, args.precision)[0],
                           {"precision": args.precision, **_file_key(ref)})
        rows.append((f"reference {ref.name}", model.inference_parameters(), per, 0.0))
        if atlas_model is None and model.atlas is not None:
            atlas_model, atlas_file = model, ref
    if atlas_model is not None:
        per = _test_scores(Path(args.out) / "atlas_only.json", test,
                           lambda s: metrics_of(atlas_model, atlas_only(atlas_model, s), s.labels), _file_key(atlas_file))
        rows.append(("atlas only (no image)", 0, per, 0.0))
    what = "steps of 2 boxes of 48x48 voxels x 4 slices (wide recipe)" if wide else "dense steps of 4 slices"
    print(f"\nbudget: {args.epochs} epochs x {args.steps_per_epoch} {what}, {args.precision}, lr {args.lr:g}; "
          f"{args.test} test pseudo-subjects ({'wide test stream' if wide else 'paper split'})")
    print(f"{'model':<34} {'N_param':>10} {'Dice':>16} {'Hausdorff (mm)':>18} {'MSD (mm)':>16}")
    for preset, n, per, _ in rows:
        cells = [f"{np.mean(per[m]):.3f} +- {np.std(per[m]):.3f}" for m in METRICS]
        count = f"{n:,}" if n else ""
        print(f"{preset:<34} {count:>10} {cells[0]:>16} {cells[1]:>18} {cells[2]:>16}")


if __name__ == "__main__":
    main()
