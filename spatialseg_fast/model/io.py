"""Saving and loading models: one safetensors file whose metadata holds the JSON configuration.

No pickle: a model file can be inspected and loaded without executing anything. The optional
probabilistic atlas (ProbBranch input on the model's template grid) travels in the same file.
"""
from __future__ import annotations

import json
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_path
from .config import ModelConfig
from .network import SpatialSegNet

FORMAT = "spatialseg_fast.model"
FORMAT_VERSION = 1
ATLAS_KEY = "__atlas__"
SPARSE_ATLAS_KEY = "__atlas_sparse__"  # zlib bytes of a SparseAtlas; its shape in the metadata
TEMPLATE_KEY = "__template__"  # the template T1 (coarse grid) that inputs are registered to


class ModelNotFoundError(FileNotFoundError):
    """No model was given and no default weights are installed."""


EXTRA_PREFIX = "__extra__."  # tensors that travel with a model but are not weights (training state)


def save_model(model: SpatialSegNet, path, *, atlas: torch.Tensor | None = None, metadata: dict | None = None, dtype=None,
               extra_tensors: dict | None = None, template=None) -> Path:
    """Write weights (+ optional atlas: [L, D, H, W] tensor or SparseAtlas) and configuration to
    `path` atomically (a temporary file renamed into place, so a crash never leaves a half-written
    model). dtype: store the weights in this dtype (e.g. torch.float16 to halve the file).
    extra_tensors: more named tensors stored beside them (read back by :func:`load_extra_tensors`).
    template: a Volume, the T1 template inputs are registered to (default: the model's own)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    from .atlas import SparseAtlas

    atlas = atlas if atlas is not None else getattr(model, "atlas", None)
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(model.config.to_dict()),
        "extra": json.dumps(metadata or {}),
    }
    template = template if template is not None else getattr(model, "template", None)
    if template is not None:
        tensors[TEMPLATE_KEY] = torch.as_tensor(template.data).to(torch.float16).contiguous()
        meta["template_affine"] = json.dumps(template.affine.tolist())
    for name, t in (extra_tensors or {}).items():
        tensors[EXTRA_PREFIX + name] = t.detach().cpu().contiguous()
    if isinstance(atlas, SparseAtlas):
        blob, atlas_meta = atlas.to_bytes()
        tensors[SPARSE_ATLAS_KEY] = torch.from_numpy(blob)
        meta["atlas"] = json.dumps(atlas_meta)
    elif atlas is not None:
        tensors[ATLAS_KEY] = torch.as_tensor(atlas).detach().cpu().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)
    return path


def load_model(path, device="cpu") -> SpatialSegNet:
    """Read a model written by :func:`save_model`; eval mode, float32 weights.

    The atlas (if stored) is ``model.atlas``; the free-form metadata is ``model.metadata``.
    Raises ValueError for a file that is not a model of a version this package reads."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .atlas import SparseAtlas

    path = Path(path)
    config, extra = read_config(path)
    try:
        tensors = load_file(str(path))
        atlas = tensors.pop(ATLAS_KEY, None)
        for key in [k for k in tensors if k.startswith(EXTRA_PREFIX)]:
            del tensors[key]
        template = tensors.pop(TEMPLATE_KEY, None)
        if template is not None:
            from ..volume import Volume

            template = Volume(template.float().numpy(), np.asarray(extra.pop("__template_affine__")))
        if SPARSE_ATLAS_KEY in tensors:
            atlas = SparseAtlas.from_bytes(tensors.pop(SPARSE_ATLAS_KEY).numpy(), extra.pop("__atlas__"))
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError, zlib.error) as exc:
        raise ValueError(f"{path} is not a readable spatialseg_fast model file ({type(exc).__name__}: {exc})") from None
    model = SpatialSegNet(config)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    except RuntimeError as exc:
        raise ValueError(f"{path}: the weights do not match the stored configuration ({exc})") from None
    model.atlas = atlas
    model.template = template
    model.metadata = extra
    return model.to(device).eval()


def load_extra_tensors(path) -> dict:
    """The extra tensors stored by ``save_model(..., extra_tensors=...)``."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for broken files
        raise ValueError(f"{path} is not a readable spatialseg_fast model file ({exc})") from None
    return {k[len(EXTRA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}


def read_config(path) -> tuple[ModelConfig, dict]:
    """(configuration, free-form metadata) of a model file, without reading its weights."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} is not a readable spatialseg_fast model file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is a safetensors file but not a spatialseg_fast model (no '{FORMAT}' metadata)")
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        version = -1
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has model format version {meta.get('format_version')!r}; this spatialseg_fast reads version {FORMAT_VERSION}")
    try:
        config = ModelConfig.from_dict(json.loads(meta["config"]))
        extra = json.loads(meta.get("extra", "{}"))
        if "atlas" in meta:
            extra["__atlas__"] = json.loads(meta["atlas"])
        if "template_affine" in meta:
            extra["__template_affine__"] = json.loads(meta["template_affine"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path} has an unreadable model configuration ({exc})") from None
    return config, extra


def default_model_path() -> Path | None:
    """The model used when none is given: the file named by ``$SPATIALSEG_MODEL`` (a lab's own
    model, also seen by batch worker processes), else the installed default weights, or None when
    this installation has none."""
    import os

    chosen = os.environ.get("SPATIALSEG_MODEL")
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise ModelNotFoundError(f"SPATIALSEG_MODEL={chosen}: no such model file")
        return path
    candidate = resources.files("spatialseg_fast") / "weights" / "default.safetensors"
    return Path(str(candidate)) if candidate.is_file() else None


def load_default_model(device="cpu") -> SpatialSegNet:
    path = default_model_path()
    if path is None:
        raise ModelNotFoundError(
            "no model given and this installation ships no default weights "
            "(spatialseg_fast/weights/default.safetensors). Pass model=load_model('path.safetensors'), "
            "or train one with `spatialseg train` (see the README)."
        )
    return load_model(path, device)


def export_model(src, dst, dtype=torch.float16, template=None, card: dict | None = None) -> Path:
    """A checkpoint as a model to ship: weights in `dtype`, atlas and metadata (training history
    included, as the model card) kept, optimizer state dropped; `template` (a Volume) added;
    `card` (e.g. hardware, held-out figures) stored as the metadata's "card" entry."""
    model = load_model(src)
    metadata = dict(model.metadata)
    if card:
        metadata["card"] = dict(card)
    return save_model(model, dst, atlas=model.atlas, metadata=metadata, dtype=dtype,
                      template=template if template is not None else model.template)
