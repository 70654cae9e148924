"""Benchmark extract_patches: N centres on a brain-sized volume, providers torch / cpp / triton.

pytest mode:  pytest bench/bench_extract_patches.py --benchmark-only
script mode:  python bench/bench_extract_patches.py [--n 4096] [--threads 1 2]
              prints samples/s per provider and the ratio cpp / torch, measured in one run.

The volume is prepared once (PatchSource: validation + anti-alias smoothing), as a training
loop does; the time to prepare it is printed separately.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import BRAIN_SHAPE, augmentation, best_time, device_of, providers, random_centres  # noqa: E402

from spatialseg_fast.ops import extract_patches, prepare_patch_source  # noqa: E402

N = 4096


def make_source():
    g = torch.Generator().manual_seed(0)
    return prepare_patch_source(torch.randn(BRAIN_SHAPE, generator=g))


@pytest.fixture(scope="module")
def source():
    return make_source()


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
@pytest.mark.parametrize("provider", providers())
def test_extract_patches(benchmark, source, provider, augment):
    benchmark.group = f"extract_patches N={N} {'augmented' if augment else 'plain'}"
    dev = device_of(provider)
    src = source.to(device=dev)
    centres = random_centres(N, BRAIN_SHAPE).to(dev)
    rot, scl = augmentation(N) if augment else (None, None)
    kw = dict(rotation=rot, scale=scl) if augment else {}
    result = benchmark(lambda: extract_patches(src, centres, backend=provider, **kw))
    assert result.planes.shape == (N, 3, 25, 25)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=N, help="centres per call")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    source = make_source()
    prep = time.perf_counter() - t0
    centres = random_centres(args.n, BRAIN_SHAPE)
    rot, scl = augmentation(args.n)
    print(f"volume {BRAIN_SHAPE}, N = {args.n} centres, outputs 3x25x25 + 15^3 + 7^3 per sample; "
          f"PatchSource prepared once in {prep:.2f} s")
    print("outputs: 'fresh' allocates the ~22 KB/sample result each call; 'reused' passes out= (a training loop)")
    print(f"{'provider':<8} {'threads':>7} {'augment':>8} {'outputs':>8} {'samples/s':>12} {'vs torch':>9}")
    for augment in (False, True):
        kw = dict(rotation=rot, scale=scl) if augment else {}
        for threads in args.threads:
            torch.set_num_threads(threads)
            rows = []
            for provider in providers():
                dev = device_of(provider)
                src = source.to(device=dev)
                c = centres.to(dev)
                run = lambda **extra: extract_patches(src, c, backend=provider, num_threads=threads, **kw, **extra)
                dt = best_time(run, repeats=2 if provider == "torch" else 5)
                rows.append((provider, "fresh", args.n / dt))
                if provider != "torch":
                    buffers = run()
                    dt = best_time(lambda: run(out=buffers))
                    rows.append((provider, "reused", args.n / dt))
            torch_rate = rows[0][2]
            for provider, outputs, rate in rows:
                print(f"{provider:<8} {threads:>7} {str(augment):>8} {outputs:>8} {rate:>12,.0f} {rate / torch_rate:>8.1f}x")


if __name__ == "__main__":
    main()
