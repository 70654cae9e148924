"""Shared test setup.

Triton kernels run in Triton's CPU interpreter when there is no GPU: TRITON_INTERPRET must be
set before any kernel module is imported, so it is done here, first.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from spatialseg_fast import _backend  # noqa: E402


def available_backends():
    """Concrete backends testable here; cpp is required when SPATIALSEG_REQUIRE_EXT=1."""
    found = ["torch"]
    if _backend.extension() is not None:  # raises under SPATIALSEG_REQUIRE_EXT=1 when missing
        found.append("cpp")
    if _backend.triton_version() is not None:
        found.append("triton")
    return found


FAST_BACKENDS = [b for b in ("cpp", "triton") if b in available_backends()]


def device_for(backend: str) -> torch.device:
    if backend == "triton" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def float32_tolerance(ref64: torch.Tensor, ref32: torch.Tensor, floor: float = 1e-6) -> float:
    """Twice the float32 reference's own error, with a floor relative to the values' size."""
    err = float((ref32.double() - ref64).abs().max()) if ref64.numel() else 0.0
    scale = float(ref64.abs().max()) if ref64.numel() else 1.0
    return 2.0 * err + floor * max(1.0, scale)


@pytest.fixture(params=FAST_BACKENDS)
def fast_backend(request):
    return request.param
