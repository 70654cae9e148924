"""Where a model's Hausdorff distance comes from: the structures it cuts short, or stray labels?

    python bench/hd_direction.py [--model PATH] [--subject 0]

On one held-out subject of each set of bench/heldout_warped.py (its labels as `spatialseg segment`
writes them, read from that benchmark's cache: run it first), per structure: the largest distance
from a true voxel to the model's label (truth -> prediction: parts of the structure it misses)
and from a labelled voxel to the truth (prediction -> truth: parts it adds, e.g. stray islands).
Distances between voxel sets (not borders), 1 mm voxels. The cleanup rules remove stray pieces;
they cannot bring back a missed part.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from heldout_warped import SEEDS, _file_key  # noqa: E402

from spatialseg_fast.cleanup import remove_outside_atlas  # noqa: E402
from spatialseg_fast.datasets import load_source  # noqa: E402
from spatialseg_fast.datasets.variability import HELDOUT, make_wide_subject  # noqa: E402
from spatialseg_fast.model import load_default_model, load_model  # noqa: E402


def directed_maxima(pred: np.ndarray, truth: np.ndarray, values) -> tuple[np.ndarray, np.ndarray]:
    """Per value present in both maps: (max truth -> pred distance, max pred -> truth distance)."""
    tp, pt = [], []
    for v in values:
        P, T = pred == v, truth == v
        if not P.any() or not T.any():
            continue
        idx = np.argwhere(P | T)  # the two sets' box, padded so that the EDT inside it is exact enough
        box = tuple(slice(max(a - 25, 0), b + 26) for a, b in zip(idx.min(0), idx.max(0)))
        p, t = P[box], T[box]
        tp.append(ndimage.distance_transform_edt(~p)[t].max())
        pt.append(ndimage.distance_transform_edt(~t)[p].max())
    return np.asarray(tp), np.asarray(pt)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model file (default: the shipped weights)")
    parser.add_argument("--subject", type=int, default=0, help="subject index in each set (default 0)")
    parser.add_argument("--cache", default=str(Path(__file__).parent / ".heldout_cache"))
    args = parser.parse_args(argv)
    model = load_model(args.model) if args.model else load_default_model()
    variant = hashlib.sha256(json.dumps(HELDOUT.as_dict(), sort_keys=True).encode()).hexdigest()[:8]
    values = [v for v in model.config.output_values() if v != 0]
    for source, seed in SEEDS.items():
        cached = Path(args.cache) / f"{_file_key(args.model)}-fp32-{variant}-{source}-{seed}-{args.subject}.npz"
        if not cached.is_file():
            sys.exit(f"hd_direction: {cached} is missing: run bench/heldout_warped.py for this model first")
        subject = make_wide_subject(load_source(source), seed, args.subject, HELDOUT)
        pred = remove_outside_atlas(np.load(cached)["pred"], model.atlas, model.config.output_values())
        tp, pt = directed_maxima(pred, subject.labels, values)
        hd = np.maximum(tp, pt)
        print(f"{subject.name}: {len(hd)} structures, Hausdorff mean {hd.mean():.2f} mm, set by a missed part "
              f"(truth -> prediction) on {(tp >= pt).mean():.0%} of them; mean truth -> prediction {tp.mean():.2f} mm, "
              f"prediction -> truth {pt.mean():.2f} mm", flush=True)


if __name__ == "__main__":
    main()
