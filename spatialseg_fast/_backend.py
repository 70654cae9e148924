"""Backend selection shared by every op: the C++ extension, Triton, or the plain-torch reference.

``backend="auto"`` picks Triton for CUDA tensors, the C++ extension for CPU tensors and the torch
reference otherwise, quietly. An explicitly requested backend that cannot run raises
:class:`BackendUnavailableError` naming the missing piece.

Environment:
  SPATIALSEG_DISABLE_EXT=1  never load the C++ extension (the torch path is used instead)
  SPATIALSEG_REQUIRE_EXT=1  a missing or broken extension is an error, not a silent fallback (CI)
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from functools import lru_cache

import torch

BACKENDS = ("auto", "cpp", "triton", "torch")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here; the message says what is missing."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@lru_cache(maxsize=None)
def _load_extension():
    """(module or None, reason it is missing or None)."""
    if _env_flag("SPATIALSEG_DISABLE_EXT"):
        return None, "disabled by SPATIALSEG_DISABLE_EXT=1"
    try:
        module = importlib.import_module("spatialseg_fast._C")
    except ImportError as exc:  # not built, or built for another Python
        return None, f"spatialseg_fast._C could not be imported ({exc})"
    return module, None


def extension():
    """The compiled module ``spatialseg_fast._C``, or None when it is missing or disabled.

    Raises ImportError when SPATIALSEG_REQUIRE_EXT=1 and the extension cannot be loaded.
    """
    module, reason = _load_extension()
    if module is None and _env_flag("SPATIALSEG_REQUIRE_EXT") and not _env_flag("SPATIALSEG_DISABLE_EXT"):
        raise ImportError(
            f"SPATIALSEG_REQUIRE_EXT=1 but the C++ extension is unavailable: {reason}. "
            "Reinstall with a C++ compiler available (pip install . --no-build-isolation -v shows the build log)."
        )
    return module


def extension_missing_reason() -> str | None:
    return _load_extension()[1]


@lru_cache(maxsize=None)
def _triton_status():
    if importlib.util.find_spec("triton") is None:
        return None, "triton is not installed (pip install 'spatialseg_fast[gpu]')"
    try:
        triton = importlib.import_module("triton")
    except Exception as exc:  # a broken triton install must not break the package
        return None, f"triton failed to import ({exc})"
    return triton.__version__, None


def triton_version() -> str | None:
    return _triton_status()[0]


def triton_interpreter() -> bool:
    """True when Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return _env_flag("TRITON_INTERPRET")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ("cpp", "triton" or "torch") to run an op on tensors on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    if backend == "auto":
        if on_cuda:
            return "triton" if triton_version() is not None else "torch"
        if device.type == "cpu" and extension() is not None:
            return "cpp"
        return "torch"
    if backend == "cpp":
        if device.type != "cpu":
            raise BackendUnavailableError(
                f"the cpp backend runs on CPU tensors, but the input is on {device}; "
                "move it with .cpu() or use backend='triton'"
            )
        if extension() is None:
            raise BackendUnavailableError(
                f"the cpp backend needs the compiled extension: {extension_missing_reason()}"
            )
        return "cpp"
    if backend == "triton":
        version, reason = _triton_status()
        if version is None:
            raise BackendUnavailableError(f"the triton backend is unavailable: {reason}")
        if not on_cuda and not triton_interpreter():
            raise BackendUnavailableError(
                f"the triton backend runs on CUDA tensors, but the input is on {device} "
                "(set TRITON_INTERPRET=1 before importing to run Triton's interpreter on the CPU)"
            )
        return "triton"
    return "torch"


def resolve_threads(num_threads: int | None) -> int:
    """Threads for the C++ kernels: None means torch's intra-op thread count."""
    if num_threads is None:
        return torch.get_num_threads()
    if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer or None; got {num_threads!r}")
    return num_threads
