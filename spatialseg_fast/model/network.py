"""The paper's network (Fig. 1) in its patch form: one voxel classified per set of patches.

BaseNet: one conv trunk per 2D scale, features concatenated, a 1x1 convolution, three fully
connected layers. DistBranch: the G x G x G landmark-distance image read as G images of G x G
through an inception block (1x1, 3x3, 5x5), merged at the second FC layer. 3dBranch: the Q^3
patch through 3D convolutions, merged at the second FC layer. ProbBranch: the atlas probability
vector through three bias-free l x l layers, added to the logits before the softmax. Auxiliary
heads on BaseNet and DistBranch exist for training only and are not part of the parameter count
(the paper's Table 1 gives the same count with and without them).

Every trunk is valid convolutions and floor-mode 2x2 max-pooling, so the same weights also run
as a fully convolutional network over whole slices (model/dense.py) with identical outputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, trunk_output_size


class Trunk(nn.Module):
    """Valid convolutions (each followed by ReLU) and 2x max-pooling, in 2D or 3D."""

    def __init__(self, layers, in_channels: int, dims: int):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.dims = dims
        self.layers = tuple(layers)
        self.convs = nn.ModuleList()
        channels = in_channels
        for layer in self.layers:
            if layer[0] == "conv":
                self.convs.append(conv(channels, layer[2], layer[1]))
                channels = layer[2]
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d if self.dims == 2 else F.max_pool3d
        convs = iter(self.convs)
        for layer in self.layers:
            x = F.relu(next(convs)(x)) if layer[0] == "conv" else pool(x, 2)
        return x

    def dense(self, x: torch.Tensor, step: int) -> tuple[torch.Tensor, int]:
        """The trunk over a whole region, every output position kept.

        Patch-form index i of a layer's output sits at ``centre + step * i + offset``; a valid
        convolution keeps the step (it becomes the dilation), a stride-2 pooling doubles it. On
        a region whose index 0 is position ``lo``, every valid op keeps "index idx is position
        lo + idx", so the returned map's index idx is the patch-form value at lo + idx.
        Returns (map, final step).
        """
        conv = F.conv2d if self.dims == 2 else F.conv3d
        # channels-last: oneDNN's fast layout here, and the gathers downstream want it anyway
        # (set before every conv: a 1-channel input does not pass the layout on)
        fmt = torch.channels_last if self.dims == 2 else torch.channels_last_3d
        convs = iter(self.convs)
        for layer in self.layers:
            if layer[0] == "conv":
                c = next(convs)
                x = conv(x.contiguous(memory_format=fmt), c.weight, c.bias, dilation=step).relu_()
            else:
                # 2^dims max-pooling, dilation `step`, stride 1: separable maxima of shifted views
                # (torch's dilated max_pool keeps argmax indices and is several times slower);
                # inline so that each intermediate is freed as soon as the next one exists
                for axis in range(2, 2 + self.dims):
                    n = x.shape[axis] - step
                    x = torch.maximum(x.narrow(axis, 0, n), x.narrow(axis, step, n))
                step *= 2
        return x, step


class DistBranch(nn.Module):
    """Inception-style block: parallel 1x1, 3x3 and 5x5 valid convolutions on the G images of
    G x G, flattened side by side, then one FC layer.

    Valid rather than 'same' convolutions: this branch is evaluated per voxel with no sharing
    between neighbours, and on 7 x 7 images valid 3x3/5x5 outputs (5x5, 3x3) cost 3.4x fewer
    multiply-adds than padded ones for the same kernels.

    The distances come in millimetres (0 to ~200 in a brain) and are divided by ``unit_mm``
    first (``ModelConfig.dist_unit_mm``, 100). Fed raw, they made this branch's activations
    ~100x those of the image branches: on a fresh basenet+dist network and one training slice its auxiliary cross-entropy was 45 instead
    of ln(135) = 4.9 and the global gradient norm 482, 474 of it this branch's, so clipping the
    norm at 2 shrank the image branches' updates ~240x. In these units: 4.9 and 2.1."""

    def __init__(self, grid: int, widths, out_features: int, unit_mm: float = 100.0):
        super().__init__()
        self.unit_mm = float(unit_mm)
        kernels = (1, 3, 5)
        if grid < max(kernels):
            raise ValueError(f"DistBranch needs a landmark grid of at least {max(kernels)} per axis; got {grid}")
        self.convs = nn.ModuleList(nn.Conv2d(grid, w, k) for w, k in zip(widths, kernels))
        self.fc = nn.Linear(sum(w * (grid - k + 1) ** 2 for w, k in zip(widths, kernels)), out_features)

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        distances = distances / self.unit_mm
        x = torch.cat([F.relu(c(distances)).flatten(1) for c in self.convs], dim=1)
        return F.relu(self.fc(x))


class ProbBranch(nn.Module):
    """Three bias-free l x l layers (3 l^2 parameters), ReLU between them, output added to the logits.

    Initialised near the identity (the last layer scaled by ``PRIOR_GAIN``, small noise on all
    three): a fresh network then starts from the atlas prior (logit + gain * probability) instead
    of ignoring it behind three small random layers, which would take many epochs to open up.

    The gain sets how confident that starting prior is. On the validation pseudo-subjects the
    cross-entropy of softmax(gain * atlas) against the true labels is lowest near 10 (2.66 at
    gain 4, 1.61 at 8, 1.59 at 10, 1.72 at 12, 2.15 at 16): a calibrated prior. A weaker one
    (gain 4) made the first training steps sharpen it through the still-random main path, which
    cost validation Dice (0.513 for the atlas alone, 0.458 after the first 50 steps); from gain
    10 the same 50 steps raised it (0.532, measured before the DistBranch unit and He init)."""

    PRIOR_GAIN = 10.0

    def __init__(self, num_classes: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(num_classes, num_classes, bias=False) for _ in range(3))
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                layer.weight.mul_(0.05).add_(torch.eye(num_classes) * (self.PRIOR_GAIN if i == 2 else 1.0))

    def forward(self, atlas: torch.Tensor) -> torch.Tensor:
        x = atlas
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < 2:
                x = F.relu(x)
        return x


class _HalfDropout(torch.autograd.Function):
    """Dropout with p = 1/2 from random bits: each element kept (and doubled) or zeroed with
    probability exactly 1/2, independently, as nn.Dropout(0.5) does.

    Why: torch's CPU dropout draws one Bernoulli variate per element, and for the head's ~2,800
    dropped activations per voxel that cost more than the fully connected layer it feeds (0.66 s
    forward + backward on 8192 x 2134 fp32 on one core, against 0.27 s here and 0.42 s for the
    640-wide matrix product). One 32-bit random integer gives 32 elements their masks."""

    _SHIFTS = torch.arange(8, dtype=torch.uint8)

    @staticmethod
    def forward(ctx, x):
        n = x.numel()
        bits = torch.randint(-(2**31), 2**31, ((n + 31) // 32,), dtype=torch.int32).view(torch.uint8)
        keep = (bits[:, None] >> _HalfDropout._SHIFTS).bitwise_and_(1).view(-1)[:n].view(x.shape)
        ctx.save_for_backward(keep)  # one byte per element, like torch's own mask
        return x * keep.to(x.dtype).mul_(2)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad * keep.to(grad.dtype).mul_(2)


class SpatialSegNet(nn.Module):
    """BaseNet + optional DistBranch, ProbBranch and 3dBranch, as configured."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        cfg, p = config, config.patch
        L = cfg.num_classes
        self.scales = nn.ModuleList(Trunk(cfg.scale_trunk, 1, 2) for _ in p.strides)
        self.scale_size = trunk_output_size(p.patch2d, cfg.scale_trunk)
        trunk_channels = self.scales[0].out_channels
        self.reduce = nn.Conv2d(trunk_channels * len(p.strides), cfg.reduce_channels, 1)
        self.fc1 = nn.Linear(cfg.reduce_channels * self.scale_size**2, cfg.fc1)
        merged = cfg.fc1
        self.dist = None
        if cfg.dist:
            self.dist = DistBranch(p.grid, cfg.dist_inception, cfg.dist_fc, cfg.dist_unit_mm)
            merged += cfg.dist_fc
        self.cube = self.cube_fc = None
        if cfg.cube:
            self.cube = Trunk(cfg.cube_trunk, 1, 3)
            self.cube_size = trunk_output_size(p.patch3d, cfg.cube_trunk)
            self.cube_fc = nn.Linear(self.cube.out_channels * self.cube_size**3, cfg.cube_fc)
            merged += cfg.cube_fc
        self.fc2 = nn.Linear(merged, cfg.fc2)
        self.fc3 = nn.Linear(cfg.fc2, L)
        self.prob = ProbBranch(L) if cfg.prob else None
        self.drop = nn.Dropout(cfg.dropout)
        # Training-only auxiliary heads (paper §3.3.1).
        self.aux_base = nn.Linear(cfg.fc1, L)
        self.aux_dist = nn.Linear(cfg.dist_fc, L) if cfg.dist else None
        self._init_hidden_layers()

    def _init_hidden_layers(self) -> None:
        """He initialisation (zero biases) of every layer followed by a ReLU.

        torch's default (uniform, variance 1/(3 fan_in)) divides the second moment of a ReLU
        network's activations by ~6 per layer: through the 5-7 layers before the logits a fresh
        network's output varied with its input by a std of 0.004 (0.5 with He), so the image
        branches started with vanishing gradients and a 100-step training of basenet learnt only
        the class frequencies. The output layers (fc3, the auxiliary heads) keep torch's small
        default and ProbBranch its near-identity."""
        skip = {self.fc3, self.aux_base, self.aux_dist, *(self.prob.layers if self.prob is not None else ())}
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)) and module not in skip:
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def inference_parameters(self) -> int:
        """Parameters used to classify a voxel (the auxiliary heads excluded), as in Table 1."""
        aux = {id(p) for m in (self.aux_base, self.aux_dist) if m is not None for p in m.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in aux)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        """self.drop, with the bit-mask form for the paper's p = 0.5 on the CPU (same distribution, faster)."""
        if self.training and self.drop.p == 0.5 and x.device.type == "cpu":  # CUDA's dropout is fused already
            return _HalfDropout.apply(x)
        return self.drop(x)

    def head(self, base: torch.Tensor, distances, cube, atlas, *, return_aux: bool = False):
        """From BaseNet's flattened reduced features (after ReLU), the landmark distances
        [N, G, G, G], the 3dBranch's flattened trunk features and the atlas rows [N, L] to
        logits [N, L]. Shared by the patch and the dense forms."""
        h1 = self._dropout(F.relu(self.fc1(base)))
        parts, aux = [h1], {}
        if return_aux:
            aux["base"] = self.aux_base(h1)
        if self.dist is not None:
            if distances is None:
                raise ValueError("this model has a DistBranch: landmark distances are required")
            d = self._dropout(self.dist(distances))
            parts.append(d)
            if return_aux:
                aux["dist"] = self.aux_dist(d)
        if self.cube is not None:
            if cube is None:
                raise ValueError("this model has a 3dBranch: 3D patches are required")
            parts.append(self._dropout(F.relu(self.cube_fc(cube))))
        h2 = self._dropout(F.relu(self.fc2(torch.cat(parts, dim=1) if len(parts) > 1 else h1)))
        logits = self.fc3(h2)
        if self.prob is not None:
            if atlas is None:
                raise ValueError("this model has a ProbBranch: atlas probabilities are required")
            logits = logits + self.prob(atlas)
        return (logits, aux) if return_aux else logits

    def forward(self, planes: torch.Tensor, cube=None, distances=None, atlas=None, *, return_aux: bool = False):
        """Patch form. planes [N, S, P, P], cube [N, Q, Q, Q], distances [N, G, G, G],
        atlas [N, L] (the fields of :class:`~spatialseg_fast.Patches`) -> logits [N, L]
        (and a dict of auxiliary logits with ``return_aux=True``)."""
        feats = [trunk(planes[:, k : k + 1]) for k, trunk in enumerate(self.scales)]
        base = F.relu(self.reduce(torch.cat(feats, dim=1))).flatten(1)
        cube_feats = None
        if self.cube is not None:
            if cube is None:
                raise ValueError("this model has a 3dBranch: 3D patches are required")
            cube_feats = self.cube(cube.unsqueeze(1)).flatten(1)
        return self.head(base, distances, cube_feats, atlas, return_aux=return_aux)


def build_model(preset: str = "full", num_classes: int = 135, *, config: ModelConfig | None = None, seed: int | None = None, **overrides) -> SpatialSegNet:
    """A freshly initialised network of a Table 1 preset (``basenet``, ``basenet+dist``,
    ``basenet+prob``, ``basenet+dist+prob``, ``basenet+dist+prob+3d`` = ``full``), or of an
    explicit :class:`ModelConfig`. ``seed`` makes the initial weights reproducible.
    Returned in eval mode (dropout off); call ``.train()`` to train it."""
    from .config import preset_config

    cfg = config if config is not None else preset_config(preset, num_classes, **overrides)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SpatialSegNet(cfg)
    else:
        model = SpatialSegNet(cfg)
    return model.eval()
