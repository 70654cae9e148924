"""The network's dense (fully convolutional) form: the same weights evaluated for every voxel of
a slab at once, with outputs equal to the patch form's (paper §2.1 network, design.md §3).

How it stays exact:
- each trunk runs once over a padded region with dilated valid convolutions and stride-1
  dilated pooling (``Trunk.dense``); a voxel's patch-form feature grid is then a strided gather
  from that map, at positions ``voxel - region_start + step * i``;
- the 1x1 reduction over the concatenated scales is linear, so each scale's slice of its weight
  is applied to that scale's map before the gather and the three gathers are summed;
- DistBranch, ProbBranch and the fully connected layers are per voxel and run unchanged on the
  gathered features (fc1 and the 3dBranch FC take their input position-major here, so their
  weight columns are permuted once instead of transposing every gathered batch).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .network import SpatialSegNet


def crop(t: torch.Tensor, starts, stops, fill: float) -> torch.Tensor:
    """t[starts:stops] over the trailing len(starts) axes, reading `fill` outside t."""
    lead = t.shape[: t.ndim - len(starts)]
    out = t.new_full((*lead, *(b - a for a, b in zip(starts, stops))), fill)
    src, dst = [slice(None)] * len(lead), [slice(None)] * len(lead)
    for n, a, b in zip(t.shape[len(lead):], starts, stops):
        lo, hi = max(a, 0), min(b, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - a, hi - a))
    out[tuple(dst)] = t[tuple(src)]
    return out


def _position_major(weight: torch.Tensor, channels: int, positions: int) -> torch.Tensor:
    """Columns of an FC weight from (channel, position) order to (position, channel) order."""
    out = weight.shape[0]
    return weight.reshape(out, channels, positions).transpose(1, 2).reshape(out, channels * positions).contiguous()


class DenseForm:
    """A model prepared for dense evaluation in one dtype on one device."""

    def __init__(self, model: SpatialSegNet, device=None, dtype=torch.float32):
        net = copy.deepcopy(model).eval().to(device=device, dtype=dtype)
        for p in net.parameters():
            p.requires_grad_(False)
        cfg = net.config
        R, f = cfg.reduce_channels, net.scale_size
        C = net.scales[0].out_channels
        # The 1x1 reduction split per scale: [R, C, 1, 1] slices of the concatenated weight.
        self.reduce_weights = [net.reduce.weight[:, k * C : (k + 1) * C].contiguous() for k in range(len(net.scales))]
        self.reduce_bias = net.reduce.bias
        net.fc1.weight.data = _position_major(net.fc1.weight, R, f * f)
        if net.cube is not None:
            net.cube_fc.weight.data = _position_major(net.cube_fc.weight, net.cube.out_channels, net.cube_size**3)
        self.net = net
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else net.fc1.weight.device
        self.half2d = (cfg.patch.patch2d - 1) // 2
        self.half3d = (cfg.patch.patch3d - 1) // 2
        self.strides = cfg.patch.strides

    @property
    def config(self):
        return self.net.config

    # -- BaseNet ---------------------------------------------------------------------------
    def scale_maps(self, regions: list[torch.Tensor]) -> list[tuple[torch.Tensor, int]]:
        """Per scale: region [T, 1, Hu, Hv] (stride-s padded slices) -> (reduced map
        [T, Lu, Lv, R] channels-last, final step)."""
        out = []
        for trunk, w, s, x in zip(self.net.scales, self.reduce_weights, self.strides, regions):
            fmap, step = trunk.dense(x, s)
            fmap = F.conv2d(fmap, w)  # the scale's share of the 1x1 reduction (bias added after the sum)
            out.append((fmap.permute(0, 2, 3, 1).contiguous(), step))
        return out

    def base_features(self, maps, t: torch.Tensor, du: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
        """[n, f*f*R] BaseNet features (position-major) of voxels at slice t, in-plane offsets
        (du, dv) from the region's start."""
        f = self.net.scale_size
        i = torch.arange(f, device=t.device)
        total = None
        for fmap, step in maps:
            T, Lu, Lv, R = fmap.shape
            offs = (step * i[:, None] * Lv + step * i[None, :]).reshape(-1)
            idx = ((t * Lu + du) * Lv + dv)[:, None] + offs[None, :]
            g = fmap.reshape(-1, R)[idx.reshape(-1)]
            total = g if total is None else total.add_(g)
        total = total.view(-1, f * f, total.shape[-1]).add_(self.reduce_bias).relu_()
        return total.reshape(total.shape[0], -1)

    # -- 3dBranch --------------------------------------------------------------------------
    def cube_map(self, region: torch.Tensor) -> tuple[torch.Tensor, int]:
        """region [A, B, C] (padded by Q//2 on every side) -> (map [A', B', C', C3] channels-last, step)."""
        fmap, step = self.net.cube.dense(region[None, None], 1)
        return fmap[0].permute(1, 2, 3, 0).contiguous(), step

    def cube_features(self, cmap: tuple[torch.Tensor, int], offsets: torch.Tensor) -> torch.Tensor:
        """[n, f^3 * C3] 3dBranch trunk features (position-major) at voxel offsets [n, 3] from
        the region's start."""
        fmap, step = cmap
        A, B, C, K = fmap.shape
        f = self.net.cube_size
        i = torch.arange(f, device=offsets.device) * step
        offs = ((i[:, None, None] * B + i[None, :, None]) * C + i[None, None, :]).reshape(-1)
        base = (offsets[:, 0] * B + offsets[:, 1]) * C + offsets[:, 2]
        g = fmap.reshape(-1, K)[(base[:, None] + offs[None, :]).reshape(-1)]
        return g.view(offsets.shape[0], -1)

    # -- per voxel -------------------------------------------------------------------------
    def head(self, base, distances, cube, atlas) -> torch.Tensor:
        return self.net.head(base, distances, cube, atlas)
