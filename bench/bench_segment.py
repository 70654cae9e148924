"""Benchmark whole-volume segmentation: the dense engine against the per-patch classifier.

pytest mode:  pytest bench/bench_segment.py --benchmark-only
              (a 96^3 volume per preset and precision, so the suite stays short)
script mode:  python bench/bench_segment.py [--presets ...] [--precisions fp32 bf16] [--sampled 20000]
              the issue's measurement: a 182x218x182 1 mm volume with a ~1.5M-voxel brain, random
              weights of each preset (135 classes), one fresh process per row so peak RSS is that
              row's own. Prints dense seconds, voxels/s, peak RSS, per-patch voxels/s measured on
              --sampled brain voxels, and the ratio, side by side.

Weights are random (seeded): speed does not depend on their values. ProbBranch presets get a
float16 atlas of the whole grid (135 x 7.2M values, 1.95 GB), counted in their RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import BRAIN_SHAPE  # noqa: E402

from spatialseg_fast import build_model, segment  # noqa: E402
from spatialseg_fast.inference import classify_voxels, prepare_source  # noqa: E402
from spatialseg_fast.model import PRESETS  # noqa: E402

RADII = (64, 82, 68)  # ellipsoid brain: 4/3 pi abc = 1.49M voxels at 1 mm


def make_brain(shape=BRAIN_SHAPE, radii=RADII, seed: int = 0):
    """(volume, mask): an ellipsoid 'brain' of smooth random texture, zero outside."""
    g = torch.Generator().manual_seed(seed)
    axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in shape]
    r = sum((a.view([-1 if i == k else 1 for i in range(3)]) / rad) ** 2 for k, (a, rad) in enumerate(zip(axes, radii)))
    mask = r < 1
    coarse = torch.rand((1, 1, *(max(2, n // 8) for n in shape)), generator=g)
    texture = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)[0, 0]
    volume = torch.where(mask, 0.5 + texture + 0.05 * torch.randn(shape, generator=g), torch.zeros(()))
    return volume, mask


def make_atlas(num_classes: int, shape, seed: int = 0):
    g = torch.Generator().manual_seed(seed + 7)
    return torch.empty((num_classes, *shape), dtype=torch.float16).uniform_(generator=g)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kilobytes


# -- pytest-benchmark ----------------------------------------------------------------------
SMALL = (96, 96, 96)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_segment_dense(benchmark, preset, precision):
    benchmark.group = f"segment dense {SMALL}"
    volume, mask = make_brain(SMALL, (30, 38, 32))
    model = build_model(preset, 135, seed=0)
    atlas = make_atlas(135, SMALL) if model.prob is not None else None
    labels = benchmark.pedantic(lambda: segment(volume, model, mask=mask, atlas=atlas, device="cpu", precision=precision),
                                rounds=1, iterations=1, warmup_rounds=0)
    assert labels.shape == SMALL


# -- script ---------------------------------------------------------------------------------
def measure(preset: str, precision: str, sampled: int, threads: int) -> dict:
    """One row, in this process: dense whole-brain time, then the per-patch rate."""
    torch.set_num_threads(threads)
    volume, mask = make_brain()
    model = build_model(preset, 135, seed=0)
    atlas = make_atlas(135, BRAIN_SHAPE) if model.prob is not None else None
    t0 = time.perf_counter()
    labels = segment(volume, model, mask=mask, atlas=atlas, device="cpu", precision=precision)
    dense_s = time.perf_counter() - t0
    rss = peak_rss_gb()
    brain = int(mask.sum())
    row = dict(preset=preset, precision=precision, threads=threads, brain_voxels=brain, dense_s=dense_s,
               dense_vox_s=brain / dense_s, peak_rss_gb=rss, labels_seen=int(torch.unique(labels).numel()))
    if sampled:
        g = torch.Generator().manual_seed(1)
        centres = mask.nonzero()[torch.randperm(brain, generator=g)[:sampled]]
        source = prepare_source(model, volume)
        t0 = time.perf_counter()
        per_patch = classify_voxels(model, source, centres, atlas, batch_size=256)
        patch_s = time.perf_counter() - t0
        dense_labels = torch.as_tensor(labels)[centres[:, 0], centres[:, 1], centres[:, 2]].long()
        row.update(sampled=sampled, patch_s=patch_s, patch_vox_s=sampled / patch_s,
                   ratio=(brain / dense_s) / (sampled / patch_s),
                   agree=float((per_patch == dense_labels).float().mean()) if precision == "fp32" else None)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--sampled", type=int, default=20000, help="voxels classified per patch (fp32 rows; 0: skip)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--one", nargs=2, metavar=("PRESET", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.sampled, args.threads)))
        return
    print(f"volume {BRAIN_SHAPE} at 1 mm, ellipsoid brain, 135 classes, random weights, {args.threads} threads")
    print(f"{'preset':<22} {'prec':<5} {'brain vox':>9} {'dense s':>8} {'vox/s':>8} {'RSS GB':>7} "
          f"{'patch vox/s':>11} {'dense/patch':>11} {'agree':>6}")
    for preset in args.presets:
        for precision in args.precisions:
            sampled = args.sampled if precision == "fp32" else 0
            cmd = [sys.executable, __file__, "--one", preset, precision, "--sampled", str(sampled), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(f"{preset:<22} {precision:<5} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            patch = f"{r['patch_vox_s']:>11,.0f} {r['ratio']:>10.0f}x" if "ratio" in r else f"{'-':>11} {'-':>11}"
            agree = f"{r['agree']:>6.4f}" if r.get("agree") is not None else f"{'-':>6}"
            print(f"{preset:<22} {precision:<5} {r['brain_voxels']:>9,d} {r['dense_s']:>8.1f} {r['dense_vox_s']:>8,.0f} "
                  f"{r['peak_rss_gb']:>7.2f} {patch} {agree}", flush=True)


if __name__ == "__main__":
    main()
