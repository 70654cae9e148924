"""Choose the weight of a model's atlas prior on validation subjects (never on test ones).

    python bench/prior_scale.py MODEL --factors 1 0.8 0.7 0.6 0.5 [--val 3] [--slabs 6] [--write F OUT]

For each factor, the model with its ProbBranch logits scaled by it (training/prior_scale.py) is
scored on the first --val subjects of the wide distribution's validation stream, as training
scores its epochs (slab Dice, training/validation.py): Dice against the subject's own labels, and
against the *unwarped* CAT12 labels (the subjects are CAT12 warped: the validation analogue of
bench/heldout_warped.py's (d), how much the model draws the template instead of the subject).
--write F OUT writes the model scaled by F to OUT.
"""
from __future__ import annotations

import argparse
import copy

import torch

from spatialseg_fast.datasets import load_source
from spatialseg_fast.model.io import load_model
from spatialseg_fast.training.data import TrainSubject, class_indices, prepare_subject
from spatialseg_fast.training.prior_scale import scale_prior, write_scaled
from spatialseg_fast.training.recipe import WIDE_SEEDS
from spatialseg_fast.training.stream import wide_cohort
from spatialseg_fast.training.validation import slab_dice


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--factors", type=float, nargs="*", default=[1.0, 0.8, 0.7, 0.6, 0.5])
    parser.add_argument("--val", type=int, default=3, help="validation subjects (default 3)")
    parser.add_argument("--slabs", type=int, default=6,
                        help="slabs per subject (default 6, as bench/average_checkpoints.py; a wide run validates on 4)")
    parser.add_argument("--write", nargs=2, metavar=("F", "OUT"), help="write the model scaled by F to OUT")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    if args.factors:
        base = load_source("cat12")
        val = [prepare_subject(model, s.image, s.labels, (1.0, 1.0, 1.0), s.name)
               for s in wide_cohort(base, args.val, WIDE_SEEDS["validation"])]
        unwarped = torch.from_numpy(class_indices(base.labels, model.config.output_values()))
        val_unwarped = [TrainSubject(source=s.source, mask=s.mask, target=unwarped, name=s.name) for s in val]
        print(f"{'factor':>6} {'Dice':>7} {'vs unwarped':>12} {'difference':>11}")
        for f in args.factors:
            m = scale_prior(copy.deepcopy(model), f)
            own = slab_dice(m, val, m.atlas, slabs=args.slabs)
            unw = slab_dice(m, val_unwarped, m.atlas, slabs=args.slabs)
            print(f"{f:>6.2f} {own:>7.4f} {unw:>12.4f} {own - unw:>+11.4f}", flush=True)
    if args.write:
        print("wrote", write_scaled(args.model, args.write[1], float(args.write[0])))


if __name__ == "__main__":
    main()
