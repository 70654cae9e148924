"""Benchmark landmark_distances: N centres, and a whole slab in box mode (7^3 landmarks).

pytest mode:  pytest bench/bench_landmark_distances.py --benchmark-only
script mode:  python bench/bench_landmark_distances.py   (points/s per provider, ratio vs torch)
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import BRAIN_SHAPE, best_time, device_of, providers, random_centres  # noqa: E402

from spatialseg_fast.ops import landmark_distances  # noqa: E402

N = 65536
SLAB = np.s_[80:84, :, :]  # 4 coronal-sized slices of every voxel: 4 x 218 x 182 points
SPACING = (1.0, 1.0, 1.2)


@pytest.mark.parametrize("provider", providers())
def test_landmark_distances_points(benchmark, provider):
    benchmark.group = f"landmark_distances N={N}"
    centres = random_centres(N, BRAIN_SHAPE).to(device_of(provider))
    out = benchmark(lambda: landmark_distances(centres, BRAIN_SHAPE, SPACING, backend=provider))
    assert out.shape == (N, 7, 7, 7)


@pytest.mark.parametrize("provider", providers())
def test_landmark_distances_slab(benchmark, provider):
    benchmark.group = "landmark_distances slab 4x218x182"
    out = benchmark(lambda: landmark_distances(SLAB, BRAIN_SHAPE, SPACING, backend=provider, device=device_of(provider)))
    assert out.shape[0] == 4 * 218 * 182


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=N)
    args = parser.parse_args(argv)
    centres = random_centres(args.n, BRAIN_SHAPE)
    slab_points = 4 * 218 * 182
    print(f"volume {BRAIN_SHAPE}, 7^3 landmarks, spacing {SPACING}")
    print(f"{'provider':<8} {'mode':<12} {'points/s':>14} {'vs torch':>9}")
    for mode in ("points", "slab"):
        rates = {}
        for provider in providers():
            dev = device_of(provider)
            if mode == "points":
                c = centres.to(dev)
                dt = best_time(lambda: landmark_distances(c, BRAIN_SHAPE, SPACING, backend=provider))
                rates[provider] = args.n / dt
            else:
                dt = best_time(lambda: landmark_distances(SLAB, BRAIN_SHAPE, SPACING, backend=provider, device=dev))
                rates[provider] = slab_points / dt
        for provider, rate in rates.items():
            print(f"{provider:<8} {mode:<12} {rate:>14,.0f} {rate / rates['torch']:>8.1f}x")


if __name__ == "__main__":
    main()
