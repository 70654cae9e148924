"""spatialseg_fast: fast whole-brain MRI structure segmentation with spatial context.

A patch-based multi-resolution CNN (Ganaye et al.) made fast with fused C++/Triton kernels.
Importing the package needs neither Triton nor the compiled extension.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("spatialseg_fast")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from .config import PatchConfig
from .ops import Patches, PatchSource, extract_patches, landmark_distances, prepare_patch_source
from ._backend import BackendUnavailableError
from .inference import classify_voxels, segment
from .model import ModelConfig, ModelNotFoundError, SpatialSegNet, build_model, load_model, save_model
from .volume import Volume


def _cpu_bf16_unit():
    from .precision import cpu_bf16_unit

    return cpu_bf16_unit()


def _auto_precision() -> str:
    """What precision="auto" picks on the default device (device="auto")."""
    from .inference import resolve_device
    from .precision import auto_precision

    return auto_precision(resolve_device("auto"))


def build_info() -> dict:
    """What this installation can use: version, C++ extension and OpenMP, threads, Triton, CUDA."""
    import os

    import torch

    from . import _backend

    info = {
        "version": __version__,
        "torch": torch.__version__,
        "extension": False,
        "extension_error": None,
        "openmp": False,
        "openmp_version": None,
        "max_threads": 1,
        "compiler": None,
        "torch_threads": torch.get_num_threads(),
        "triton": _backend.triton_version(),
        "triton_interpreter": _backend.triton_interpreter(),
        "cuda": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
        "disable_ext": os.environ.get("SPATIALSEG_DISABLE_EXT", ""),
        "cpu_bf16_unit": _cpu_bf16_unit(),
        "auto_precision": _auto_precision(),
    }
    try:
        ext = _backend.extension()
    except ImportError as exc:
        ext = None
        info["extension_error"] = str(exc)
    if ext is not None:
        compiled = ext.build_info()
        info.update(
            extension=True,
            openmp=bool(compiled["openmp"]),
            openmp_version=compiled["openmp_version"],
            max_threads=int(compiled["max_threads"]),
            compiler=compiled["compiler"],
        )
    elif info["extension_error"] is None:
        info["extension_error"] = _backend.extension_missing_reason()
    return info


__all__ = [
    "__version__",
    "build_info",
    "BackendUnavailableError",
    "ModelConfig",
    "ModelNotFoundError",
    "SpatialSegNet",
    "Volume",
    "build_model",
    "classify_voxels",
    "load_model",
    "save_model",
    "segment",
    "PatchConfig",
    "Patches",
    "PatchSource",
    "extract_patches",
    "landmark_distances",
    "prepare_patch_source",
]
