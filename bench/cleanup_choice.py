"""Choose the cleanup (spatialseg_fast/cleanup.py) on validation subjects, never on test ones.

    python bench/cleanup_choice.py [--model PATH] [--subjects 3] [--fractions 0 0.02 0.1 0.3 1] [--min-probs 0 0.1]

Subjects: the wide distribution's validation subjects (training/recipe.py WIDE_SEEDS["validation"],
the ones training already selects its best epoch on), segmented whole on the template grid (fp32).
Prints mean Dice / HD / MSD over the 134 structures for each keep fraction of the islands rule (0:
none), without and then with the atlas rule before it at each --min-probs threshold (a structure
outside the atlas where it has probability <= the threshold), and the seconds the cleanup took. Predictions are cached per model file in bench/.cleanup_cache.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from spatialseg_fast import segment
from spatialseg_fast.cleanup import check_min_prob, remove_islands, remove_outside_atlas
from spatialseg_fast.datasets import load_source
from spatialseg_fast.model import load_default_model, load_model
from spatialseg_fast.training.recipe import WIDE_SEEDS
from spatialseg_fast.training.stream import wide_cohort

from heldout_warped import METRICS, _file_key, _means


def _min_prob(text: str) -> float:
    value = float(text)
    check_min_prob(value)  # a bad threshold fails here, not after the first subject is segmented
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model file (default: the shipped weights)")
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.02, 0.1, 0.3, 1.0])
    parser.add_argument("--min-probs", type=_min_prob, nargs="+", default=[0.0],
                        help="the atlas rule's thresholds to try (default: 0)")
    parser.add_argument("--cache", default=str(Path(__file__).parent / ".cleanup_cache"))
    args = parser.parse_args(argv)
    model = load_model(args.model) if args.model else load_default_model()
    values = [v for v in model.config.output_values() if v != 0]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    base = load_source("cat12")
    subjects = wide_cohort(base, args.subjects, WIDE_SEEDS["validation"])
    variants = [(a, f) for a in (None, *args.min_probs) for f in args.fractions]  # a: the atlas rule's min_prob
    scores = {v: [] for v in variants}
    seconds = {v: [] for v in variants}
    for i, s in enumerate(subjects):
        path = cache / f"{_file_key(args.model)}-val{WIDE_SEEDS['validation']}-{i}.npz"
        if path.is_file():
            pred = np.load(path)["pred"]
        else:
            pred = np.asarray(segment(s.image, model, precision="fp32"))
            np.savez_compressed(path, pred=pred)
        for a, f in variants:
            t0 = time.perf_counter()
            clean = pred if a is None else remove_outside_atlas(pred, model.atlas, model.config.output_values(),
                                                                min_prob=a)
            clean = remove_islands(clean, keep_fraction=f)
            seconds[a, f].append(time.perf_counter() - t0)
            scores[a, f].append(_means(clean, s.labels, values))
        row = "  ".join(f"{'' if a is None else f'atlas>{a:g}+'}{f:g}: {scores[a, f][-1]['dice']:.4f}/{scores[a, f][-1]['hausdorff']:.2f}"
                        for a, f in variants)
        print(f"subject {i}: Dice/HD per cleanup  {row}", flush=True)
    print(f"\n{'atlas rule':>10} {'keep fraction':>14} {'Dice':>8} {'HD mm':>8} {'MSD mm':>8} {'cleanup s':>10}"
          f"   (mean of {len(subjects)} validation subjects)")
    for a, f in variants:
        m = {k: np.mean([r[k] for r in scores[a, f]]) for k in METRICS}
        print(f"{'no' if a is None else f'> {a:g}':>10} {f:>14g} {m['dice']:>8.4f} {m['hausdorff']:>8.2f} {m['msd']:>8.3f} "
              f"{np.mean(seconds[a, f]):>10.2f}")


if __name__ == "__main__":
    main()
