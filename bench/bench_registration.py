"""Where does registration cost accuracy? Held-out subjects moved by known transforms.

    python bench/bench_registration.py [--subjects 3] [--segment] [--model PATH] [--json OUT.json]

Each held-out subject of bench/heldout_warped.py (ICBM 2009c T1 + CAT12 labels, warped; on the
template grid) is given a new header: its array unchanged, its affine moved by a known rigid motion
(10 degrees about one axis, a few mm of shift) or a known affine (rotation, 8% scale, shear). The
pipeline must find that motion: the template-world -> subject-world map it should return is exactly
the motion, so with the known transform both resamplings are identities and the result equals
segmenting in place.

Per subject and motion it prints:
  err mean/max   distance (mm) between where the estimated and the true transform send the brain's
                 voxels (what a 134-structure segmentation feels)
  similarity     the final similarity the registration reports (NCC at 2 mm)
  seconds        registration time
  perfect-model Dice  the subject's own labels taken through the pipeline's two resamplings with the
                 estimated transform (a model that is exactly right in template space), mapped back
                 by nearest neighbour (nn) or by the pipeline's trilinear-weighted vote (vote): 1 -
                 this is the Dice that registration + resampling alone cost
and with --segment the model's mean Dice in place and through the whole pipeline (registration
estimated), the number issue 17 targets (<= 0.01 lost).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from spatialseg_fast.datasets import load_source, template_grid
from spatialseg_fast.datasets.variability import HELDOUT, make_wide_subject
from spatialseg_fast.registration import register, to_subject, to_template
from spatialseg_fast.volume import Volume

SEEDS = {"icbm2009c": 4000, "cat12": 5000}  # bench/heldout_warped.py's subjects (never used in training)


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def motions() -> dict:
    rigid = np.eye(4)
    rigid[:3, :3] = rotation(0, 10.0)
    rigid[:3, 3] = [3.0, -4.0, 5.0]
    affine = np.eye(4)
    affine[:3, :3] = rotation(2, -7.0) @ rotation(1, 5.0) @ np.array([[1.08, 0.04, 0.0], [0.0, 0.95, 0.03], [0.0, 0.0, 1.03]])
    affine[:3, 3] = [-6.0, 2.5, -3.0]
    return {"none": np.eye(4), "rigid": rigid, "affine": affine}


def transform_error(found: np.ndarray, truth: np.ndarray, brain: np.ndarray, affine: np.ndarray):
    """Distances (mm) between found(x) and truth(x) over the brain's voxel centres x (template world)."""
    idx = np.argwhere(brain)[::7].astype(np.float64)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    d = world @ (found[:3, :3] - truth[:3, :3]).T + (found[:3, 3] - truth[:3, 3])
    err = np.linalg.norm(d, axis=1)
    return float(err.mean()), float(err.max())


def mean_dice(pred: np.ndarray, truth: np.ndarray, values) -> float:
    n = int(max(values)) + 1
    p, t = pred.ravel().astype(np.int64), truth.ravel().astype(np.int64)
    inter = np.bincount(t[p == t], minlength=n)
    total = np.bincount(t, minlength=n) + np.bincount(p, minlength=n)
    v = np.asarray([x for x in values if total[x] > 0])
    return float((2 * inter[v] / total[v]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--source", choices=sorted(SEEDS), default="icbm2009c",
                    help="the held-out subjects' image: ICBM 2009c (another template) or CAT12 (the model's own)")
    ap.add_argument("--segment", action="store_true", help="also segment with the model (in place and registered)")
    ap.add_argument("--unwarped", action="store_true",
                    help="the source template itself with its labels (no deformation): issue 17's first measurement")
    ap.add_argument("--motions", nargs="+", choices=sorted(motions()), default=sorted(motions()))
    ap.add_argument("--model", default=None)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from spatialseg_fast.model import load_default_model, load_model

    model = load_model(args.model) if args.model else load_default_model()
    base = load_source(args.source)
    shape, affine = template_grid()
    values = [v for v in model.config.output_values() if v != 0]
    rows = []
    for i in range(args.subjects):
        subject = base if args.unwarped else make_wide_subject(base, SEEDS[args.source], i, HELDOUT)
        brain = subject.image != 0
        truth = np.where(brain, subject.labels, 0)  # the unwarped template's labels can reach past its image
        inplace = None
        if args.segment:  # in place through the same pipeline (its default cleanup included), no registration
            from spatialseg_fast.pipeline import segment_volume

            inplace = np.asarray(segment_volume(Volume(np.where(brain, subject.image, 0).astype(np.float32), affine),
                                                model, register=False, precision=args.precision,
                                                skull_strip="no").labels.data)
        for name, motion in motions().items():
            if name not in args.motions:
                continue
            moved_affine = motion @ affine
            moved = Volume(np.where(brain, subject.image, 0).astype(np.float32), moved_affine)
            t0 = time.perf_counter()
            reg = register(moved, model.template)
            seconds = time.perf_counter() - t0
            found = reg.transform
            err_mean, err_max = transform_error(found, motion, brain, affine)
            # a model exactly right in template space: the labels the resampled image shows there
            seen = np.asarray(to_template(Volume(subject.labels, moved_affine), shape, affine, found,
                                          kind="label_linear").data)
            row = {"subject": i, "motion": name, "err_mean_mm": err_mean, "err_max_mm": err_max,
                   "similarity": reg.similarity, "seconds": seconds}
            for rule in ("label", "label_linear"):
                back = np.asarray(to_subject(Volume(seen, affine), shape, moved_affine, found, kind=rule).data)
                row[f"perfect_model_dice_{'nn' if rule == 'label' else 'vote'}"] = mean_dice(
                    np.where(brain, back, 0), truth, values)
            if inplace is not None:
                result = segment_volume(moved, model, precision=args.precision, skull_strip="no")
                row["model_inplace_dice"] = mean_dice(inplace, truth, values)
                row["model_registered_dice"] = mean_dice(np.asarray(result.labels.data), truth, values)
            rows.append(row)
            print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    for name in args.motions:
        sel = [r for r in rows if r["motion"] == name]
        keys = [k for k in sel[0] if k not in ("subject", "motion")]
        print(f"mean {name:7s} " + "  ".join(f"{k} {np.mean([r[k] for r in sel]):.4f}" for k in keys))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
