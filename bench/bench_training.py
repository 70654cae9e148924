"""Training throughput: voxel-samples per second in patch mode vs dense mode, same model.

pytest mode:  pytest bench/bench_training.py --benchmark-only   (a small synthetic volume)
script mode:  python bench/bench_training.py [--precisions fp32 bf16] [--steps 4] [--synthetic] [--dropout-ratio]
                                           [--box-ratio]
              the full preset with 135 classes on one CAT12 pseudo-subject (template grid,
              ~1.9M brain voxels; --synthetic: an ellipsoid brain of the same size, no fetch):
              optimizer steps of dense mode (slabs of 4 slices, every brain voxel a sample) and
              of patch mode (batches of 256 patches, the paper's), best of --steps each after one
              warm-up step, printed side by side with the ratio (target: dense >= 20x).
              --box-ratio: dense fp32 steps of the whole slab (the paper-split recipe) and of one
              48x48 box with half its voxels sampled (the image-first recipe's --box 48
              --sample-fraction 0.5; --boxes-per-step 2 makes a step of two of these), alternating
              in one run: samples/s and steps/s of each (issue 14's throughput target).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pytest
import torch

from spatialseg_fast import build_model
from spatialseg_fast.datasets.atlas import build_atlas
from spatialseg_fast.training.data import prepare_subject
from spatialseg_fast.training.loop import TrainOptions, _dense_step, _optimizer, _patch_step


def synthetic_pair(shape=(173, 209, 173), classes=135, seed=0):
    """An ellipsoid brain of smooth texture cut into `classes - 1` slabs (label = class index)."""
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float32)
    c = (np.array(shape) - 1) / 2
    r = (((idx - c) / (np.array(shape) * 0.42)) ** 2).sum(-1)
    inside = r < 1
    labels = np.where(inside, 1 + (idx[..., 1] * (classes - 1) // shape[1]).astype(np.int64) % (classes - 1), 0)
    image = np.where(inside, 1.0 + 0.2 * np.sin(idx[..., 0] / 5) + 0.05 * rng.standard_normal(shape), 0.0)
    return image.astype(np.float32), labels.astype(np.uint8)


def setup(image, labels, values):
    model = build_model("full", len(values), seed=0, intensity_reference="brain_median", label_values=values)
    subject = prepare_subject(model, image, labels)
    atlas = build_atlas([labels], values)
    model.train()
    return model, subject, atlas


def rate(model, subject, atlas, options, steps, first: int = 1) -> float:
    step_fn = _dense_step if options.mode == "dense" else _patch_step
    opt = _optimizer(model, options)
    rng = np.random.default_rng(0)
    best = 0.0
    for i in range(1 - first, steps + 1):
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        _, n = step_fn(model, subject, atlas, options, rng)
        opt.step()
        if subject.mask.is_cuda:  # the trunks' backward and the update run asynchronously there
            torch.cuda.synchronize()
        if i:  # the first step warms up allocators and oneDNN kernels
            best = max(best, n / (time.perf_counter() - t0))
    return best


@pytest.fixture(scope="module")
def small():
    image, labels = synthetic_pair((40, 44, 38), classes=6)
    return setup(image, labels, tuple(range(6)))


@pytest.mark.parametrize("mode", ["dense", "patch"])
def test_training_step(benchmark, small, mode):
    model, subject, atlas = small
    options = TrainOptions(mode=mode, slab=4, batch_size=64)
    rng = np.random.default_rng(0)
    step_fn = _dense_step if mode == "dense" else _patch_step
    benchmark(lambda: step_fn(model, subject, atlas, options, rng))


def dropout_ratio(image, labels, values, steps: int) -> None:
    """Dense fp32 steps (slabs of 4) with the bit-mask dropout and with torch's, alternating."""
    from spatialseg_fast.model.network import SpatialSegNet

    model, subject, atlas = setup(image, labels, values)
    options = TrainOptions(mode="dense", slab=4, precision="fp32")
    fast = SpatialSegNet._dropout
    rates = {"bit-mask dropout": [], "torch dropout": []}
    rate(model, subject, atlas, options, 0, first=1)  # warm-up
    for _ in range(steps):
        for name in rates:
            SpatialSegNet._dropout = fast if name == "bit-mask dropout" else (lambda self, x: self.drop(x))
            rates[name].append(rate(model, subject, atlas, options, 1, first=0))
    SpatialSegNet._dropout = fast
    for name, r in rates.items():
        print(f"{name:<18} dense samples/s: median {np.median(r):,.0f}  ({', '.join(f'{x:,.0f}' for x in r)})")
    print(f"ratio {np.median(rates['bit-mask dropout']) / np.median(rates['torch dropout']):.2f}x")


def box_ratio(image, labels, values, steps: int) -> None:
    """Whole-slab and box dense fp32 steps, alternating, on the same model and subject."""
    model, subject, atlas = setup(image, labels, values)
    kinds = {"whole slab (slab 4)": TrainOptions(mode="dense", slab=4, precision="fp32"),
             "box 48 (slab 4, fraction 0.5)": TrainOptions(mode="dense", slab=4, precision="fp32", box=48,
                                                           sample_fraction=0.5)}
    samples = {k: [] for k in kinds}
    seconds = {k: [] for k in kinds}
    for i in range(steps + 1):
        for name, options in kinds.items():
            rng = np.random.default_rng(i)
            opt = _optimizer(model, options)
            opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            _, n = _dense_step(model, subject, atlas, options, rng)
            opt.step()
            if i:  # the first round warms up allocators and oneDNN kernels
                samples[name].append(n)
                seconds[name].append(time.perf_counter() - t0)
    rates = {}
    for name in kinds:
        rates[name] = np.median(np.asarray(samples[name]) / np.asarray(seconds[name]))
        print(f"{name:<30} median {rates[name]:>8,.0f} samples/s, {np.median(seconds[name]):6.2f} s/step, "
              f"{np.median(samples[name]):>9,.0f} samples/step")
    whole, box = rates.values()
    print(f"box / whole slab: {box / whole:.2f}x samples/s, "
          f"{np.median(seconds[list(kinds)[0]]) / np.median(seconds[list(kinds)[1]]):.1f}x steps/s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--dropout-ratio", action="store_true")
    parser.add_argument("--box-ratio", action="store_true")
    args = parser.parse_args(argv)
    if args.synthetic:
        image, labels = synthetic_pair()
        values = tuple(range(135))
    else:
        from spatialseg_fast.datasets import label_table
        from spatialseg_fast.datasets.cohort import paper_split

        subject = paper_split("train")[0]
        image, labels = subject.image, subject.labels
        values = label_table()[0]
    print(f"full preset, 135 classes, {int((image != 0).sum()):,} brain voxels, {torch.get_num_threads()} threads")
    if args.dropout_ratio:
        return dropout_ratio(image, labels, values, args.steps)
    if args.box_ratio:
        return box_ratio(image, labels, values, args.steps)
    print(f"{'precision':<10} {'dense samples/s':>16} {'patch samples/s':>16} {'dense/patch':>12}")
    for precision in args.precisions:
        model, subject, atlas = setup(image, labels, values)
        dense = rate(model, subject, atlas, TrainOptions(mode="dense", slab=4, precision=precision), args.steps)
        patch = rate(model, subject, atlas, TrainOptions(mode="patch", batch_size=256, precision=precision), args.steps)
        print(f"{precision:<10} {dense:>16,.0f} {patch:>16,.0f} {dense / patch:>11.1f}x", flush=True)


if __name__ == "__main__":
    main()
