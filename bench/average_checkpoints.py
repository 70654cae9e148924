"""Average checkpoints of one run and compare them on validation subjects (never on test ones).

    python bench/average_checkpoints.py OUT.safetensors CKPT1 CKPT2 [...] [--val 3] [--slabs 6]

Writes the mean of the checkpoints' weights to OUT (spatialseg_fast.training.average) and prints
the slab validation Dice (training/validation.py: the per-class overlap on fixed slabs, as training
selects its best epoch) of every input and of the average, on the first --val subjects of the wide
distribution's validation stream (training/recipe.py WIDE_SEEDS["validation"]), each model with its
own atlas.
"""
from __future__ import annotations

import argparse

from spatialseg_fast.datasets import load_source
from spatialseg_fast.model.io import load_model
from spatialseg_fast.training.average import average_checkpoints
from spatialseg_fast.training.data import prepare_subject
from spatialseg_fast.training.recipe import WIDE_SEEDS
from spatialseg_fast.training.stream import wide_cohort
from spatialseg_fast.training.validation import slab_dice


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--val", type=int, default=3, help="validation subjects (default 3)")
    parser.add_argument("--slabs", type=int, default=6, help="slabs per subject (default 6; a wide run validates its epochs on 4)")
    args = parser.parse_args(argv)
    average_checkpoints(args.checkpoints, args.out)
    avg = load_model(args.out)
    base = load_source("cat12")
    val = [prepare_subject(avg, s.image, s.labels, (1.0, 1.0, 1.0), s.name)
           for s in wide_cohort(base, args.val, WIDE_SEEDS["validation"])]
    for path in [*args.checkpoints, args.out]:
        m = load_model(path)
        print(f"{slab_dice(m, val, m.atlas, slabs=args.slabs):.4f}  {path}", flush=True)


if __name__ == "__main__":
    main()
