"""The paper's network: configuration presets, the patch form, the dense form, model files."""
from .config import ALIASES, PAPER_PARAMS, PRESETS, ModelConfig, preset_config
from .dense import DenseForm
from .io import ModelNotFoundError, default_model_path, export_model, load_default_model, load_model, read_config, save_model
from .network import SpatialSegNet, build_model

__all__ = [
    "ALIASES", "PAPER_PARAMS", "PRESETS", "ModelConfig", "preset_config", "DenseForm",
    "ModelNotFoundError", "default_model_path", "export_model", "load_default_model", "load_model", "read_config",
    "save_model",
    "SpatialSegNet", "build_model",
]
