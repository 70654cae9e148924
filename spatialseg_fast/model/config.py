"""Model configuration: the presets of the paper's Table 1 and the layer widths behind them.

A configuration is plain data (JSON-serialisable) so that a saved model carries everything
needed to rebuild it. Trunk layers are written as a small language that both the patch form and
the dense form of the network read: ``("conv", k, channels)`` is a valid k x k (x k) convolution
followed by ReLU, ``("pool",)`` is a 2 x 2 (x 2) max-pooling with stride 2 (floor mode).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..config import PatchConfig

# Table 1 of the paper: parameters of each configuration for 135 classes.
PAPER_PARAMS = {
    "basenet": 1_249_415,
    "basenet+dist": 1_508_511,
    "basenet+prob": 1_304_090,
    "basenet+dist+prob": 1_563_186,
    "basenet+dist+prob+3d": 2_847_794,
}

PRESETS = {
    "basenet": dict(dist=False, prob=False, cube=False),
    "basenet+dist": dict(dist=True, prob=False, cube=False),
    "basenet+prob": dict(dist=False, prob=True, cube=False),
    "basenet+dist+prob": dict(dist=True, prob=True, cube=False),
    "basenet+dist+prob+3d": dict(dist=True, prob=True, cube=True),
}
ALIASES = {"full": "basenet+dist+prob+3d"}

Layer = tuple  # ("conv", kernel, channels) | ("pool",)


def _layers(spec) -> tuple:
    out = []
    for layer in spec:
        layer = tuple(layer)
        if layer[0] == "conv" and len(layer) == 3 and layer[1] >= 1 and layer[2] >= 1:
            out.append(("conv", int(layer[1]), int(layer[2])))
        elif layer == ("pool",):
            out.append(("pool",))
        else:
            raise ValueError(f"a trunk layer is ('conv', kernel, channels) or ('pool',); got {layer!r}")
    return tuple(out)


def trunk_output_size(size: int, layers) -> int:
    """Side of a trunk's output for an input of side `size` (valid convs, floor pooling)."""
    side = size
    for layer in layers:
        side = side - layer[1] + 1 if layer[0] == "conv" else side // 2
        if side < 1:
            raise ValueError(f"the trunk {layers} does not fit an input of side {size}")
    return side


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a network; ``build_model`` turns it into a module."""

    preset: str = "basenet+dist+prob+3d"
    num_classes: int = 135
    dist: bool = True
    """DistBranch: distances to the landmark grid, merged at the second FC layer."""
    prob: bool = True
    """ProbBranch: atlas probabilities through three bias-free l x l layers, added to the logits."""
    cube: bool = True
    """3dBranch: the Q^3 patch through 3D convolutions, merged at the second FC layer."""
    patch: PatchConfig = field(default_factory=PatchConfig)
    # BaseNet: one trunk per 2D scale (shared layer spec, separate weights).
    scale_trunk: tuple = (("conv", 3, 16), ("conv", 3, 32), ("pool",), ("conv", 3, 48), ("pool",))
    reduce_channels: int = 64
    """Width of the 1x1 convolution applied to the concatenated scale features."""
    fc1: int = 640
    fc2: int = 640
    # DistBranch: inception-style block of 1x1, 3x3, 5x5 valid convolutions on G images of G x G.
    dist_inception: tuple = (16, 16, 16)
    dist_fc: int = 130
    dist_unit_mm: float = 100.0
    """DistBranch reads the landmark distances in units of this many mm (see DistBranch). Model
    files written before this field existed fed raw millimetres and load with 1.0."""
    # 3dBranch.
    cube_trunk: tuple = (("conv", 3, 32), ("conv", 3, 128), ("conv", 3, 32), ("pool",), ("conv", 3, 16))
    cube_fc: int = 1364
    dropout: float = 0.5
    intensity_mean: float = 0.0
    intensity_std: float = 1.0
    """Normalisation applied to raw intensities before patches are cut: (x - mean) / std."""
    intensity_reference: str = ""
    """"brain_median": first divide the volume by the median of its non-zero voxels, so that
    scans on any intensity scale (a 0-1 template, a 0-100 one, raw scanner units) look alike."""
    label_names: tuple = ()
    """Structure name of each class index, when known."""
    label_values: tuple = ()
    """The label value each class index is written as in output label maps (e.g. the
    Neuromorphometrics codes); empty: class index i is written as i. Class 0 is background (0)."""

    def __post_init__(self):
        object.__setattr__(self, "scale_trunk", _layers(self.scale_trunk))
        object.__setattr__(self, "cube_trunk", _layers(self.cube_trunk))
        object.__setattr__(self, "dist_inception", tuple(int(c) for c in self.dist_inception))
        if not float(self.dist_unit_mm) > 0:
            raise ValueError(f"dist_unit_mm must be positive; got {self.dist_unit_mm}")
        object.__setattr__(self, "label_names", tuple(str(n) for n in self.label_names))
        if isinstance(self.patch, dict):
            object.__setattr__(self, "patch", PatchConfig.from_dict(self.patch))
        if self.num_classes < 2 or self.num_classes > 65535:
            raise ValueError(f"num_classes must be from 2 to 65535; got {self.num_classes}")
        if self.label_names and len(self.label_names) != self.num_classes:
            raise ValueError(f"label_names has {len(self.label_names)} names for {self.num_classes} classes")
        object.__setattr__(self, "label_values", tuple(int(v) for v in self.label_values))
        if self.label_values:
            v = self.label_values
            if len(v) != self.num_classes or v[0] != 0 or len(set(v)) != len(v) or min(v) < 0 or max(v) > 65535:
                raise ValueError("label_values must give each class a distinct value in [0, 65535], class 0 -> 0")
        if self.intensity_reference not in ("", "brain_median"):
            raise ValueError(f"intensity_reference must be '' or 'brain_median'; got {self.intensity_reference!r}")
        if not self.intensity_std > 0:
            raise ValueError(f"intensity_std must be positive; got {self.intensity_std}")
        if self.dist and not self.patch.grid:
            raise ValueError("DistBranch needs a landmark grid (patch.grid > 0)")
        if self.cube and not self.patch.patch3d:
            raise ValueError("3dBranch needs a 3D patch (patch.patch3d > 0)")
        trunk_output_size(self.patch.patch2d, self.scale_trunk)
        if self.cube:
            trunk_output_size(self.patch.patch3d, self.cube_trunk)

    def output_values(self) -> tuple:
        """The label value written for each class index."""
        return self.label_values or tuple(range(self.num_classes))

    def label_table(self) -> dict:
        """{label value: structure name} ({} when the names are unknown)."""
        return dict(zip(self.output_values(), self.label_names)) if self.label_names else {}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch"] = self.patch.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model configuration field(s): {', '.join(sorted(unknown))}")
        return cls(**{"dist_unit_mm": 1.0, **d})  # older files: raw millimetres

    def replace(self, **changes) -> "ModelConfig":
        return replace(self, **changes)


def preset_config(preset: str = "full", num_classes: int = 135, **overrides) -> ModelConfig:
    """The configuration of a Table 1 preset (``full`` is ``basenet+dist+prob+3d``)."""
    name = ALIASES.get(preset, preset)
    if name not in PRESETS:
        choices = ", ".join([*PRESETS, *ALIASES])
        raise ValueError(f"unknown preset {preset!r}; choose one of: {choices}")
    return ModelConfig(preset=name, num_classes=num_classes, **{**PRESETS[name], **overrides})
