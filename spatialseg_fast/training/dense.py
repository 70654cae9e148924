"""Dense-mode training: the network's dense form with autograd, every brain voxel of a slab a sample.

The same construction as the inference engine's dense form (model/dense.py), written with
differentiable ops on the module's own parameters: each 2D trunk runs once over the slab's padded
slices (dilated valid convolutions), each scale's share of the 1x1 reduction is applied to its map,
and a voxel's f x f feature grid is gathered from the maps at ``offset + step * i``; the 3dBranch
trunk runs once over the slab's padded box. The gathered features are then put in the patch form's
(channel, position) order and go through ``SpatialSegNet.head`` itself (dropout, auxiliary heads),
so the logits equal the patch form's exactly (tests/test_training.py checks this).

Memory: the trunk maps of one slab are held with their graph; the head runs over chunks of voxels,
each chunk's backward stopping at detached copies of the maps, whose gradients are summed and sent
through the trunks once at the end of the slab (``SlabStep``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.dense import crop
from ..model.network import SpatialSegNet
from ..ops import landmark_distances


def scale_maps(model: SpatialSegNet, scales: torch.Tensor, w0: int, w1: int, box, fill: float):
    """Per 2D scale: (reduced map [T, Lu, Lv, R] channels-last, step) over slices w0..w1 of the
    plane-major smoothed copies `scales` [S, n_w, n_u, n_v], in-plane box (u0, u1, v0, v1)."""
    p = model.config.patch
    h2 = (p.patch2d - 1) // 2
    u0, u1, v0, v1 = box
    C = model.scales[0].out_channels
    out = []
    for k, (trunk, s) in enumerate(zip(model.scales, p.strides)):
        region = crop(scales[k], (w0, u0 - h2 * s, v0 - h2 * s), (w1, u1 + h2 * s, v1 + h2 * s), fill).unsqueeze(1)
        fmap, step = trunk.dense(region, s)
        fmap = F.conv2d(fmap, model.reduce.weight[:, k * C : (k + 1) * C])
        out.append((fmap.permute(0, 2, 3, 1), step))
    return out


def base_features(model: SpatialSegNet, maps, t, du, dv) -> torch.Tensor:
    """[n, R * f * f] BaseNet features in the patch form's (channel, position) order."""
    f, R = model.scale_size, model.config.reduce_channels
    i = torch.arange(f, device=t.device)
    total = 0
    for fmap, step in maps:
        T, Lu, Lv, _ = fmap.shape
        offs = (step * i[:, None] * Lv + step * i[None, :]).reshape(-1)
        idx = (((t * Lu + du) * Lv + dv)[:, None] + offs[None, :]).reshape(-1)
        total = total + fmap.reshape(-1, R).index_select(0, idx)
    total = F.relu(total.view(-1, f * f, R) + model.reduce.bias)
    return total.transpose(1, 2).reshape(-1, R * f * f)


def cube_map(model: SpatialSegNet, volume: torch.Tensor, lo, hi, fill: float):
    """The 3dBranch trunk over the box [lo, hi) padded by Q//2: (map [A, B, C, K], step)."""
    h3 = (model.config.patch.patch3d - 1) // 2
    region = crop(volume, [a - h3 for a in lo], [b + h3 for b in hi], fill)
    fmap, step = model.cube.dense(region[None, None], 1)
    return fmap[0].permute(1, 2, 3, 0), step


def cube_features(model: SpatialSegNet, cmap, offsets: torch.Tensor) -> torch.Tensor:
    """[n, K * f^3] 3dBranch trunk features at voxel offsets [n, 3] from the box start, in the
    patch form's (channel, position) order."""
    fmap, step = cmap
    A, B, C, K = fmap.shape
    f = model.cube_size
    i = torch.arange(f, device=offsets.device) * step
    offs = ((i[:, None, None] * B + i[None, :, None]) * C + i[None, None, :]).reshape(-1)
    base = (offsets[:, 0] * B + offsets[:, 1]) * C + offsets[:, 2]
    g = fmap.reshape(-1, K).index_select(0, (base[:, None] + offs[None, :]).reshape(-1))
    return g.view(-1, f**3, K).transpose(1, 2).reshape(-1, K * f**3)


def to_array(model: SpatialSegNet, nz: torch.Tensor, w0: int) -> torch.Tensor:
    """Plane-major (t, u, v) indices of a slab starting at w0 -> array-order voxel indices."""
    p = model.config.patch
    out = torch.empty_like(nz)
    out[:, p.slice_axis] = nz[:, 0] + w0
    out[:, p.in_plane_axes[0]], out[:, p.in_plane_axes[1]] = nz[:, 1], nz[:, 2]
    return out


class SlabStep:
    """Forward + backward of every masked voxel of slices w0..w1 (along the slice axis), chunked.

    ``run(loss_fn)`` calls ``loss_fn(logits, aux, xyz)`` per chunk (it returns the chunk's summed
    loss) and back-propagates through the head per chunk and through the trunks once; returns the
    summed loss. ``logits(...)`` gives the logits without gradients (for tests and validation)."""

    def __init__(self, model: SpatialSegNet, source, mask_p: torch.Tensor, w0: int, w1: int, atlas=None,
                 chunk: int = 8192, box=None, position_dropout: float = 0.0, generator=None):
        self.model, self.source, self.w0, self.w1, self.atlas, self.chunk = model, source, w0, w1, atlas, chunk
        self.position_dropout, self.generator = position_dropout, generator
        sub = mask_p[w0:w1]
        if box is not None:  # an in-plane sub-box (u0, u1, v0, v1): only its voxels are samples
            keep = torch.zeros_like(sub)
            keep[:, box[0] : box[1], box[2] : box[3]] = True
            sub = sub & keep
        self.nz = sub.nonzero()
        self.xyz = to_array(model, self.nz, w0)
        nz = self.nz
        self.box = (int(nz[:, 1].min()), int(nz[:, 1].max()) + 1, int(nz[:, 2].min()), int(nz[:, 2].max()) + 1) if len(nz) else None

    def __len__(self) -> int:
        return len(self.nz)

    def _trunks(self):
        m, p = self.model, self.model.config.patch
        maps = scale_maps(m, self.source.scales, self.w0, self.w1, self.box, p.fill)
        cmap = lo = None
        if m.cube is not None:
            lo = self.xyz.min(0).values
            cmap = cube_map(m, self.source.volume, lo.tolist(), (self.xyz.max(0).values + 1).tolist(), p.fill)
        return maps, cmap, lo

    def _inputs(self, c0: int, c1: int):
        m, p = self.model, self.model.config.patch
        xyz = self.xyz[c0:c1]
        dist = landmark_distances(xyz, self.source.shape, self.source.spacing, p.grid) if m.dist is not None else None
        rows = None
        if m.prob is not None:
            rows = self.atlas.rows(xyz) if hasattr(self.atlas, "rows") else \
                self.atlas[:, xyz[:, 0], xyz[:, 1], xyz[:, 2]].T.float()
        if self.position_dropout > 0:
            dist, rows = self._drop_position(dist, rows, len(xyz))
        return xyz, dist, rows

    def _drop_position(self, dist, rows, n: int):
        """Training only: each voxel loses its DistBranch and its ProbBranch input (zeroed),
        independently, with probability `position_dropout`. Zero atlas rows give zero prior
        logits and zero distances a constant DistBranch output, so on those voxels the image
        pathways must carry the answer alone: without this the network learns the position's
        most frequent label and never leaves it (issue 14)."""
        p = self.position_dropout
        # drawn on the CPU generator whatever the device: the same masks on a CPU and a GPU
        if dist is not None:
            keep = (torch.rand(n, generator=self.generator) >= p).to(device=dist.device, dtype=dist.dtype)
            dist = dist * keep.view(-1, 1, 1, 1)
        if rows is not None:
            keep = (torch.rand(n, generator=self.generator) >= p).to(device=rows.device, dtype=rows.dtype)
            rows = rows * keep.view(-1, 1)
        return dist, rows

    def _head(self, maps, cmap, lo, c0, c1, return_aux):
        m = self.model
        part = self.nz[c0:c1]
        base = base_features(m, maps, part[:, 0], part[:, 1] - self.box[0], part[:, 2] - self.box[2])
        xyz, dist, rows = self._inputs(c0, c1)
        cube = cube_features(m, cmap, xyz - lo) if cmap is not None else None
        return m.head(base, dist, cube, rows, return_aux=return_aux), xyz

    @torch.no_grad()
    def logits(self) -> torch.Tensor:
        maps, cmap, lo = self._trunks()
        return torch.cat([self._head(maps, cmap, lo, c0, c0 + self.chunk, False)[0] for c0 in range(0, len(self), self.chunk)])

    def run(self, loss_fn) -> float:
        if len(self) == 0:
            return 0.0
        maps, cmap, lo = self._trunks()
        # leaves at the trunk outputs: each chunk's backward stops here
        leaf_maps = [(f.detach().requires_grad_(), s) for f, s in maps]
        leaf_cmap = None if cmap is None else (cmap[0].detach().requires_grad_(), cmap[1])
        total = 0.0
        for c0 in range(0, len(self), self.chunk):
            (logits, aux), xyz = self._head(leaf_maps, leaf_cmap, lo, c0, c0 + self.chunk, True)
            loss = loss_fn(logits, aux, xyz)
            loss.backward()
            total += float(loss.detach())
        outs = [f for f, _ in maps] + ([cmap[0]] if cmap is not None else [])
        grads = [f.grad for f, _ in leaf_maps] + ([leaf_cmap[0].grad] if leaf_cmap is not None else [])
        torch.autograd.backward(outs, grads)
        return total
