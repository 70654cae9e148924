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
        # a fresh module with the same weights (a deepcopy would also copy attributes such as a
        # loaded model's atlas, gigabytes the dense form never reads)
        net = SpatialSegNet(model.config)
        net.load_state_dict(model.state_dict())
        net = net.eval().to(device=device, dtype=dtype)
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
        if net.dist is not None:
            # DistBranch: its three convolutions on the G x G images are one linear map of the
            # G^3 distances, written out as a matrix (applying each conv to the identity basis
            # gives its entries exactly). One GEMM of G^3 x 1328 beats three tiny-image convs
            # ~2x on the CPU. Columns are position-major, as are the FC weight blocks.
            G = cfg.patch.grid
            basis = torch.eye(G**3, dtype=dtype, device=device).view(G**3, G, G, G)
            w, col, mats, biases, fc_parts = net.dist.fc.weight, 0, [], [], []
            for conv in net.dist.convs:
                y = F.conv2d(basis, conv.weight)
                c, positions = y.shape[1], y.shape[2] * y.shape[3]
                mats.append(y.permute(0, 2, 3, 1).reshape(G**3, -1))
                biases.append(conv.bias.repeat(positions))
                fc_parts.append(_position_major(w[:, col : col + c * positions], c, positions))
                col += c * positions
            self.dist_matrix = (torch.cat(mats, dim=1) / net.dist.unit_mm).contiguous()  # the branch's input unit
            self.dist_bias = torch.cat(biases)
            self.dist_fc_weight = torch.cat(fc_parts, dim=1).contiguous()
        # fc2 as column blocks, one per merged part (no concatenation of the parts)
        sizes = [cfg.fc1] + ([cfg.dist_fc] if net.dist is not None else []) + ([cfg.cube_fc] if net.cube is not None else [])
        self.fc2_parts = [w.contiguous() for w in torch.split(net.fc2.weight, sizes, dim=1)]
        self.net = net
        self._buffers: dict[str, torch.Tensor] = {}
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else net.fc1.weight.device
        self.half2d = (cfg.patch.patch2d - 1) // 2
        self.half3d = (cfg.patch.patch3d - 1) // 2
        self.strides = cfg.patch.strides

    @property
    def config(self):
        return self.net.config

    def _buf(self, name: str, n: int, width: int) -> torch.Tensor:
        """A reused [n, width] work buffer: chunk-sized activations allocated afresh every chunk
        cost more in page faults (first touch of new memory) than the GEMMs writing them."""
        b = self._buffers.get(name)
        if b is None or b.shape[0] < n or b.shape[1] != width:
            b = self._buffers[name] = torch.empty((n, width), dtype=self.dtype, device=self.device)
        return b[:n]

    def release(self) -> None:
        """Free the work buffers (they are reallocated on the next use)."""
        self._buffers.clear()

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
        n, R = t.shape[0], self.net.config.reduce_channels
        total = self._buf("base", n * f * f, R)
        for k, (fmap, step) in enumerate(maps):
            T, Lu, Lv, _ = fmap.shape
            offs = (step * i[:, None] * Lv + step * i[None, :]).reshape(-1)
            idx = (((t * Lu + du) * Lv + dv)[:, None] + offs[None, :]).reshape(-1)
            if k == 0:
                torch.index_select(fmap.reshape(-1, R), 0, idx, out=total)
            else:
                total.add_(torch.index_select(fmap.reshape(-1, R), 0, idx, out=self._buf("gather", n * f * f, R)))
        total = total.view(n, f * f, R).add_(self.reduce_bias).relu_()
        return total.view(n, -1)

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
        n = offsets.shape[0]
        out = self._buf("cube", n * f**3, K)
        torch.index_select(fmap.reshape(-1, K), 0, (base[:, None] + offs[None, :]).reshape(-1), out=out)
        return out.view(n, -1)

    # -- per voxel -------------------------------------------------------------------------
    def head(self, base, distances, cube, atlas) -> torch.Tensor:
        """The network's head (``SpatialSegNet.head`` in eval mode) without concatenations:
        a layer fed by concatenated parts is the sum of its column blocks applied to each part."""
        net = self.net
        n = base.shape[0]
        h1 = torch.addmm(net.fc1.bias, base, net.fc1.weight.t(), out=self._buf("h1", n, net.fc1.out_features)).relu_()
        parts = iter(self.fc2_parts)
        acc = torch.addmm(net.fc2.bias, h1, next(parts).t(), out=self._buf("h2", n, net.fc2.out_features))
        if net.dist is not None:
            acc.addmm_(self._dist(distances), next(parts).t())
        if net.cube is not None:
            c = torch.addmm(net.cube_fc.bias, cube, net.cube_fc.weight.t(), out=self._buf("c", n, net.cube_fc.out_features)).relu_()
            acc.addmm_(c, next(parts).t())
        logits = torch.addmm(net.fc3.bias, acc.relu_(), net.fc3.weight.t())
        if net.prob is not None:
            x = atlas
            for i, layer in enumerate(net.prob.layers):
                x = x @ layer.weight.t()
                if i < 2:
                    x.relu_()
            logits += x
        return logits

    def _dist(self, distances: torch.Tensor) -> torch.Tensor:
        n = distances.shape[0]
        h = torch.addmm(self.dist_bias, distances.reshape(n, -1), self.dist_matrix,
                        out=self._buf("dist", n, self.dist_matrix.shape[1])).relu_()
        fc = self.net.dist.fc
        return torch.addmm(fc.bias, h, self.dist_fc_weight.t(), out=self._buf("d", n, fc.out_features)).relu_()
