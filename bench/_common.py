"""Shared inputs and timing for the benchmarks (same inputs for every provider)."""
from __future__ import annotations

import time

import torch

BRAIN_SHAPE = (182, 218, 182)  # 1 mm MNI-sized volume


def providers() -> list[str]:
    """torch, cpp when built, triton when a GPU is present (the interpreter is not a benchmark)."""
    from spatialseg_fast import _backend

    found = ["torch"]
    if _backend.extension() is not None:
        found.append("cpp")
    if _backend.triton_version() is not None and torch.cuda.is_available():
        found.append("triton")
    return found


def device_of(provider: str) -> torch.device:
    return torch.device("cuda") if provider == "triton" else torch.device("cpu")


def random_centres(n: int, shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, s, (n,), generator=g) for s in shape], 1)


def augmentation(n: int, seed: int = 0):
    """The paper's ranges: rotation in [-10, 10] degrees, scale in [0.9, 1.1]."""
    g = torch.Generator().manual_seed(seed + 1)
    return torch.rand(n, generator=g) * 20 - 10, torch.rand(n, generator=g) * 0.2 + 0.9


def best_time(fn, repeats: int = 5, min_time: float = 0.5) -> float:
    """Best wall time of one call over several rounds (after a warm-up call)."""
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    best = float("inf")
    start = time.perf_counter()
    rounds = 0
    while rounds < repeats or (time.perf_counter() - start < min_time and rounds < 50):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        rounds += 1
    return best
