"""Whole-volume inference: the per-patch classifier (the paper's way, the oracle) and the dense
engine behind :func:`segment` (same labels, the computation shared between neighbouring voxels).

The dense engine walks the brain's bounding box in slabs of slices along the model's slice axis.
For each slab that holds a brain voxel it runs the 2D trunks over the slab's padded slices and
the 3D trunk over the padded slab (model/dense.py), then classifies the slab's brain voxels in
chunks: gathered trunk features, landmark distances made by the distance kernel for just those
voxels, atlas rows, the fully connected layers, and a softmax/argmax per chunk. The C x D x H x W
probability volume is never held; slab and chunk sizes follow a memory budget.
"""
from __future__ import annotations

import contextlib
import math
from contextlib import contextmanager

import numpy as np
import torch

from ._progress import Progress
from .model.dense import DenseForm, crop
from .model.network import SpatialSegNet
from .model.atlas import SparseAtlas
from .ops._checks import as_tensor, check_atlas, check_centres, check_spacing, check_volume
from .ops.extract_patches import PatchSource, extract_patches, prepare_patch_source
from .ops.landmark_distances import landmark_distances
from .volume import Volume

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# -- input checks ------------------------------------------------------------------------------
def resolve_device(device) -> torch.device:
    """"auto" -> the first CUDA device when there is one, else the CPU; "cpu"; "cuda[:N]"."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available on this machine (use device='cpu')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}")
    return dev


def resolve_precision(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return PRECISIONS[precision]


def _check_model(model) -> SpatialSegNet:
    if not isinstance(model, SpatialSegNet):
        raise ValueError(f"model must be a SpatialSegNet (build_model / load_model); got {type(model).__name__}")
    return model


def _volume_tensor(volume) -> torch.Tensor:
    vol = as_tensor(volume, "volume")
    if vol.dtype == torch.bool or vol.is_complex():
        raise ValueError(f"volume must hold real intensities; got dtype {vol.dtype}")
    if not vol.is_floating_point():
        vol = vol.to(torch.float32)
    check_volume(vol)  # 3D, not empty, finite
    return vol


def _atlas_tensor(model: SpatialSegNet, atlas, shape) -> torch.Tensor | None:
    """The [L, D, H, W] atlas for a ProbBranch model (the given one, else the model's own)."""
    if model.prob is None:
        return None
    own = atlas is None
    if own:
        atlas = getattr(model, "atlas", None)
        if atlas is None:
            raise ValueError("this model has a ProbBranch and needs atlas probabilities: pass atlas= ([L, D, H, W]) or use a model saved with its atlas")
    if own and tuple(atlas.shape[1:]) != tuple(shape):  # the user gave no atlas: the volume is off the model's grid
        raise ValueError(f"the volume has shape {tuple(shape)} but this model's template grid is "
                         f"{tuple(atlas.shape[1:])}: register and resample it onto the template first "
                         "(spatialseg segment / segment_file do that)")
    if isinstance(atlas, SparseAtlas):
        if tuple(atlas.shape) != (model.num_classes, *shape):
            raise ValueError(f"atlas has shape {tuple(atlas.shape)} but the volume and model need "
                             f"({model.num_classes}, {', '.join(map(str, shape))}): is the volume on the model's template grid?")
        return atlas
    return check_atlas(atlas, shape, model.num_classes)


def _mask_tensor(mask, volume: torch.Tensor) -> torch.Tensor:
    if mask is None:  # the non-zero voxels, enclosed holes filled (zero-valued ventricle cores)
        from .brainmask import default_brain_mask

        nonzero = volume != 0
        if not bool(nonzero.any()):
            raise ValueError("volume has no non-zero voxel: nothing to segment (pass mask= to choose the voxels)")
        return torch.from_numpy(default_brain_mask(nonzero.cpu().numpy())).to(volume.device)
    m = as_tensor(mask, "mask")
    if tuple(m.shape) != tuple(volume.shape):
        raise ValueError(f"mask has shape {tuple(m.shape)} but the volume has shape {tuple(volume.shape)}")
    if m.is_floating_point() and not bool(torch.isfinite(m).all()):
        raise ValueError("mask contains NaN or infinite values")
    m = m.to(device=volume.device) != 0
    if not bool(m.any()):
        raise ValueError("mask is empty: it selects no voxel")
    return m


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_probabilities(model: SpatialSegNet, classes) -> list[int] | None:
    """The class indices whose probability maps are wanted, as a list of ints in [0, num_classes)."""
    if classes is None:
        return None
    values = np.atleast_1d(np.asarray(classes, dtype=object))
    if not (values.ndim == 1 and len(values) > 0 and all(_is_int(x) and 0 <= int(x) < model.num_classes for x in values)):
        raise ValueError(f"probabilities must list integer class indices in [0, {model.num_classes}); got {classes!r}")
    return [int(x) for x in values]


def _probability_classes(model: SpatialSegNet, labels) -> list[int] | None:
    """segment()'s return_probabilities (output label values) as class indices."""
    if labels is None:
        return None
    index = {v: i for i, v in enumerate(model.config.output_values())}
    values = np.atleast_1d(np.asarray(labels, dtype=object))
    if not (values.ndim == 1 and len(values) > 0 and all(_is_int(x) and int(x) in index for x in values)):
        known = f"in [0, {model.num_classes})" if not model.config.label_values else "among the model's label values"
        raise ValueError(f"return_probabilities must list integer labels {known}; got {labels!r}")
    return [index[int(x)] for x in values]


def normalise(model: SpatialSegNet, volume: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std with the model's stored intensity statistics, in float32 (after scaling
    by the median of the non-zero voxels when the model asks for it)."""
    cfg = model.config
    vol = volume.to(torch.float32)
    if cfg.intensity_reference == "brain_median":
        inside = vol[vol != 0]
        if inside.numel():
            vol = vol / inside.abs().median().clamp(min=1e-12)
    if cfg.intensity_mean == 0.0 and cfg.intensity_std == 1.0:
        return vol
    return (vol - cfg.intensity_mean) / cfg.intensity_std


def prepare_source(model: SpatialSegNet, volume, spacing=None, device=None) -> PatchSource:
    """Normalise a raw volume with the model's statistics and smooth it for every 2D scale."""
    vol = _volume_tensor(volume)
    if device is not None:
        vol = vol.to(device)
    return prepare_patch_source(normalise(model, vol), model.config.patch, spacing=spacing)


@contextmanager
def _matmul_tf32(allowed: bool):
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@contextmanager
def cuda_scope(device: torch.device, *, tf32: bool, benchmark: bool = False):
    """Run a block on `device`: on CUDA, with it as the current device (Triton kernels launch on
    the current one) and TF32 allowed in convolutions and matrix products only if `tf32` (off for
    fp32 logits equal to the CPU's); nothing on other devices."""
    if device.type != "cuda":
        yield
        return
    with torch.cuda.device(device), _matmul_tf32(tf32), \
            torch.backends.cudnn.flags(enabled=True, benchmark=benchmark, deterministic=False, allow_tf32=tf32):
        yield


@contextmanager
def _threads(n: int | None):
    if n is None:
        yield
        return
    if int(n) < 1:
        raise ValueError(f"threads must be >= 1; got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- the paper's way: one set of patches per voxel ---------------------------------------------
@torch.no_grad()
def classify_voxels(model: SpatialSegNet, volume, centres, atlas=None, *, spacing=None, batch_size: int = 512,
                    return_logits: bool = False, backend: str = "auto", threads: int | None = None):
    """Classify the given voxels the paper's way: patches from :func:`extract_patches` through the
    network's patch form, one forward pass per voxel (batched). The oracle for the dense engine,
    and the cheaper route for a few thousand voxels.

    volume: raw [D, H, W] intensities (normalised here with the model's statistics) or a
        :class:`PatchSource` from :func:`prepare_source` (already normalised).
    centres: [N, 3] integer voxel indices. atlas: [L, D, H, W] for ProbBranch models.
    Returns int64 labels [N] (and float32 logits [N, L] with ``return_logits=True``), on the CPU.
    """
    model = _check_model(model)
    source = volume if isinstance(volume, PatchSource) else prepare_source(model, volume, spacing)
    if source.config != model.config.patch:
        raise ValueError("the PatchSource was prepared with another PatchConfig than the model's")
    atl = _atlas_tensor(model, atlas, source.shape)
    c = check_centres(centres, source.shape, integer=True).to(torch.int64)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    dev = next(model.parameters()).device
    labels, logits = [], []
    was_training = model.training
    model.eval()  # dropout off: the classifier, not a training step
    try:
        with _threads(threads):
            for start in range(0, max(len(c), 1), batch_size):
                part = c[start : start + batch_size]
                if len(part) == 0:
                    break
                p = extract_patches(source, part, backend=backend)
                rows = None
                if isinstance(atl, SparseAtlas):
                    rows = atl.rows(part).to(dev)
                elif atl is not None:
                    idx = part.long()
                    rows = atl[:, idx[:, 0], idx[:, 1], idx[:, 2]].T.to(dev, torch.float32)
                out = model(p.planes.to(dev, torch.float32), None if p.cube is None else p.cube.to(dev, torch.float32),
                            None if p.distances is None else p.distances.to(dev, torch.float32), rows).float()
                labels.append(out.argmax(1).cpu())
                if return_logits:
                    logits.append(out.cpu())
    finally:
        model.train(was_training)
    L = model.num_classes
    labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    if return_logits:
        return labels, (torch.cat(logits) if logits else torch.zeros(0, L))
    return labels


# -- the dense engine --------------------------------------------------------------------------
class DenseEngine:
    """Dense inference of one model on one device in one precision.

    memory_budget: bytes the engine may use for its working buffers (default 1 GiB on the CPU,
    a third of the free memory on a GPU); slab (slices per tile) and chunk (voxels per
    classifier batch) are derived from it unless given. Results do not depend on them.
    """

    def __init__(self, model: SpatialSegNet, *, device="auto", precision: str = "fp32", threads: int | None = None,
                 memory_budget: int | None = None, slab: int | None = None, chunk: int | None = None):
        model = _check_model(model)
        self.device = resolve_device(device)
        if precision != "auto" and precision not in PRECISIONS:  # users may pass "auto" here: name it
            raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {precision!r}")
        if precision == "auto":
            from .precision import auto_precision

            precision = auto_precision(self.device)
        self.precision = precision
        self.dtype = resolve_precision(precision)
        self.threads = threads
        for name, v in (("threads", threads), ("memory_budget", memory_budget), ("slab", slab), ("chunk", chunk)):
            if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        if memory_budget is None:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                memory_budget = max(64 << 20, free // 3)
            else:
                memory_budget = 1 << 30
        if memory_budget < (64 << 20):
            raise ValueError(f"memory_budget must be at least 64 MiB; got {memory_budget} bytes")
        self.memory_budget, self.slab, self.chunk = int(memory_budget), slab, chunk
        self.model = model
        self.dense = DenseForm(model, self.device, self.dtype)
        # On a GPU every tile gets the same shape (the whole brain's in-plane box, full-height
        # 3D slabs) so that cuDNN's autotuned algorithms are reused; on the CPU tiles hug the
        # brain instead (less work, no autotuning to amortise).
        self.fixed_shapes = self.device.type == "cuda"

    def _plan(self, extent_u: int, extent_v: int) -> tuple[int, int, int]:
        """(slices per 2D slab, slices per 3D slab, voxels per classifier chunk) keeping the live
        buffers within the memory budget: 15% for a 2D slab's maps (a few slices keep the convs
        efficient), 55% for the 3D slab's (every 3D slab recomputes a Q-1 slice halo, so they
        should be thick), 30% for one chunk's fully connected activations."""
        cfg, net = self.model.config, self.model
        p = cfg.patch
        b = torch.finfo(self.dtype).bits // 8
        budget = self.memory_budget
        h2 = (p.patch2d - 1) // 2
        areas = [(extent_u + 2 * h2 * s) * (extent_v + 2 * h2 * s) for s in p.strides]
        widest2 = max(l[2] for l in cfg.scale_trunk if l[0] == "conv")
        # reduced maps of every scale, plus one trunk layer's input and output
        per_slice2 = b * (cfg.reduce_channels * sum(areas) + 3 * widest2 * max(areas))
        slab2 = int(max(1, min(64, 0.15 * budget // per_slice2)))
        slab3 = slab2
        if cfg.cube:
            h3 = (p.patch3d - 1) // 2
            # the widest pair of consecutive maps (a conv's input and output) is the peak
            widths = [1] + [l[2] for l in cfg.cube_trunk if l[0] == "conv"]
            widest3 = max(a + b_ for a, b_ in zip(widths, widths[1:]))
            per_slice3 = widest3 * (extent_u + 2 * h3) * (extent_v + 2 * h3) * b
            slab3 = int(max(1, min(128, 0.55 * budget // per_slice3 - 2 * h3)))
        per_voxel = 2 * cfg.reduce_channels * net.scale_size**2 + cfg.fc1 + 2 * cfg.fc2 + 6 * cfg.num_classes
        if cfg.dist:
            per_voxel += 2 * p.grid**3 + net.dist.fc.in_features + cfg.dist_fc
        if cfg.cube:
            per_voxel += 2 * net.cube_fc.in_features + cfg.cube_fc
        per_voxel *= max(b, 4)
        chunk = int(max(256, min(1 << 15, 0.3 * budget // per_voxel)))
        slab2, slab3, chunk = self.slab or slab2, self.slab or slab3, self.chunk or chunk
        return min(slab2, slab3), slab3, chunk

    @staticmethod
    def _balanced(extent: int, size: int) -> int:
        """The same number of tiles of at most `size`, made as equal as possible."""
        return math.ceil(extent / math.ceil(extent / size))

    @torch.no_grad()
    def run(self, source: PatchSource, mask: torch.Tensor, atlas: torch.Tensor | None = None,
            probabilities=None, progress: bool = False, *, return_logits: bool = False):
        """Labels (int16 [D, H, W], int32 above 32767 classes, CPU; 0 outside the mask) and, when `probabilities` lists
        labels, their float16 softmax maps [K, D, H, W] (0 outside the mask), or None.

        return_logits: also return the float32 logits [L, D, H, W] (0 outside the mask). That is
        the whole C x D x H x W volume the engine otherwise never holds: for tests and small
        volumes only."""
        if not isinstance(source, PatchSource):
            raise ValueError(f"source must be a PatchSource (prepare_source); got {type(source).__name__}")
        if source.config != self.model.config.patch:
            raise ValueError("the PatchSource was prepared with another PatchConfig than the model's")
        if mask is None:
            raise ValueError("mask is required: the voxels to classify, a boolean [D, H, W] (segment() defaults it to the non-zero voxels)")
        mask = _mask_tensor(mask, source.volume)
        atlas = _atlas_tensor(self.model, atlas, source.shape)
        probabilities = _check_probabilities(self.model, probabilities)
        with contextlib.ExitStack() as scope:
            scope.enter_context(_threads(self.threads))
            # cuDNN autotuning for the constant tile shapes; no TF32 in fp32 (same logits as the CPU)
            scope.enter_context(cuda_scope(self.device, tf32=self.dtype != torch.float32, benchmark=self.fixed_shapes))
            try:
                return self._run(source, mask, atlas, probabilities, progress, return_logits)
            finally:
                self.dense.release()

    def _run(self, source, mask, atlas, probabilities, progress, return_logits=False):
        p = self.model.config.patch
        dev = self.device
        src = source.to(device=dev, dtype=torch.float32)
        shape = src.shape
        mask_p = mask.to(dev).permute((p.slice_axis, *p.in_plane_axes))
        labels = torch.zeros(shape, dtype=torch.int16 if self.model.num_classes <= 32767 else torch.int32, device=dev)
        probs = None
        if probabilities is not None:
            probabilities = torch.as_tensor(probabilities, dtype=torch.int64, device=dev)
            probs = torch.zeros((len(probabilities), *shape), dtype=torch.float16, device=dev)
        logits = torch.zeros((self.model.num_classes, *shape), dtype=torch.float32, device=dev) if return_logits else None
        nz_w = mask_p.flatten(1).any(1).nonzero().flatten()
        w_lo, w_hi = int(nz_w.min()), int(nz_w.max()) + 1
        in_plane = mask_p.any(0)
        us, vs = in_plane.any(1).nonzero().flatten(), in_plane.any(0).nonzero().flatten()
        slab2, slab3, chunk = self._plan(int(us.max() - us.min()) + 1, int(vs.max() - vs.min()) + 1)
        slab3 = self._balanced(w_hi - w_lo, slab3)
        slab2 = self._balanced(slab3, slab2)
        box = (int(us.min()), int(us.max()) + 1, int(vs.min()), int(vs.max()) + 1, slab3)  # for fixed_shapes
        # tiles: 3D slabs (the 3dBranch map is shared by their 2D slabs), 2D slabs, voxel chunks;
        # a tile without a brain voxel is skipped
        tiles = []
        for W0 in range(w_lo, w_hi, slab3):
            W1 = min(W0 + slab3, w_hi)
            inner = [(w0, min(w0 + slab2, W1)) for w0 in range(W0, W1, slab2) if bool(mask_p[w0 : min(w0 + slab2, W1)].any())]
            if inner:
                tiles.append(((W0, W1), inner))
        bar = Progress(sum(len(t[1]) for t in tiles), "segment", "slabs", enabled=progress)
        for (W0, W1), inner in tiles:
            cmap = self._cube_map(src, mask_p, W0, W1, box)
            for w0, w1 in inner:
                self._slab(src, mask_p, w0, w1, box, cmap, atlas, chunk, labels, probabilities, probs, logits)
                bar.update()
        bar.close()
        out = labels.cpu(), (None if probs is None else probs.cpu())
        return (*out, logits.cpu()) if return_logits else out

    def _to_array(self, nz: torch.Tensor, w0: int) -> torch.Tensor:
        """Plane-major (t, u, v) voxel indices of a slab starting at w0 -> array-order indices."""
        p = self.model.config.patch
        out = torch.empty_like(nz)
        out[:, p.slice_axis] = nz[:, 0] + w0
        out[:, p.in_plane_axes[0]], out[:, p.in_plane_axes[1]] = nz[:, 1], nz[:, 2]
        return out

    def _cube_map(self, src, mask_p, W0, W1, box):
        """The 3dBranch trunk over the padded box of the slab's brain voxels: (map, box start)."""
        if self.model.cube is None:
            return None
        p = self.model.config.patch
        h3 = (p.patch3d - 1) // 2
        if self.fixed_shapes:
            u0, u1, v0, v1, slab3 = box
            corners = torch.tensor([[0, u0, v0], [slab3 - 1, u1 - 1, v1 - 1]], device=self.device)
            lo, hi = self._to_array(corners, W0).unbind(0)
            hi = hi + 1
        else:
            xyz = self._to_array(mask_p[W0:W1].nonzero(), W0)
            lo, hi = xyz.min(0).values, xyz.max(0).values + 1
        region = crop(src.volume, (lo - h3).tolist(), (hi + h3).tolist(), p.fill).to(self.dtype)
        return self.dense.cube_map(region), lo

    def _slab(self, src, mask_p, w0, w1, box, cmap, atlas, chunk, labels, probabilities, probs, logits_out):
        p = self.model.config.patch
        dev, dt = self.device, self.dtype
        h2 = (p.patch2d - 1) // 2
        nz = mask_p[w0:w1].nonzero()  # [n, 3] plane-major (t, u, v)
        if self.fixed_shapes:
            u0, u1, v0, v1, _ = box
        else:
            u0, v0 = int(nz[:, 1].min()), int(nz[:, 2].min())
            u1, v1 = int(nz[:, 1].max()) + 1, int(nz[:, 2].max()) + 1
        regions = [
            crop(src.scales[k], (w0, u0 - h2 * s, v0 - h2 * s), (w1, u1 + h2 * s, v1 + h2 * s), p.fill).unsqueeze(1).to(dt)
            for k, s in enumerate(p.strides)
        ]
        maps = self.dense.scale_maps(regions)
        del regions
        xyz_all = self._to_array(nz, w0)
        shape = src.shape
        strides = torch.tensor([shape[1] * shape[2], shape[2], 1], device=dev)
        atlas_box = atlas_lo = None
        if atlas is not None:
            # the slab's atlas box channels-last: one row per voxel instead of L strided reads
            atlas_lo, hi = xyz_all.min(0).values, xyz_all.max(0).values + 1
            box = tuple(slice(int(a), int(b)) for a, b in zip(atlas_lo, hi))
            atlas_box = atlas[(slice(None), *box)].to(dev).permute(1, 2, 3, 0).contiguous()
            box_strides = torch.tensor([atlas_box.shape[1] * atlas_box.shape[2], atlas_box.shape[2], 1], device=dev)
        flat_labels = labels.view(-1)
        for c0 in range(0, len(nz), chunk):
            part, xyz = nz[c0 : c0 + chunk], xyz_all[c0 : c0 + chunk]
            base = self.dense.base_features(maps, part[:, 0], part[:, 1] - u0, part[:, 2] - v0)
            dist = None
            if self.model.dist is not None:
                dist = landmark_distances(xyz, shape, src.spacing, p.grid, device=dev).to(dt)
            cube = None if cmap is None else self.dense.cube_features(cmap[0], xyz - cmap[1])
            rows = None
            if atlas_box is not None:
                local = ((xyz - atlas_lo) * box_strides).sum(1)
                rows = atlas_box.view(-1, atlas_box.shape[-1]).index_select(0, local).to(dt)
            logits = self.dense.head(base, dist, cube, rows).float()
            flat = (xyz * strides).sum(1)
            flat_labels[flat] = logits.argmax(1).to(flat_labels.dtype)
            if logits_out is not None:
                logits_out.view(logits.shape[1], -1)[:, flat] = logits.T
            if probs is not None:
                sm = torch.softmax(logits, 1)[:, probabilities].to(torch.float16)
                probs.view(len(probabilities), -1)[:, flat] = sm.T


def _label_dtype(max_value: int):
    return np.uint8 if max_value <= 255 else np.uint16


def to_label_values(model: SpatialSegNet, classes: np.ndarray) -> np.ndarray:
    """Class indices -> the model's output label values (uint8 when they fit, else uint16)."""
    values = np.asarray(model.config.output_values())
    dtype = _label_dtype(int(values.max()))
    if not model.config.label_values:
        return classes.astype(dtype)
    return values.astype(dtype)[classes]


def segment(volume, model: SpatialSegNet | None = None, *, mask=None, atlas=None, spacing=None, device="auto",
            precision: str = "auto", threads: int | None = None, return_probabilities=None, progress: bool = False,
            memory_budget: int | None = None):
    """Segment a whole volume into the model's classes with the dense engine.

    volume: [D, H, W] numpy array or torch tensor of raw intensities in the model's space
        (skull-stripped, on the model's template grid), or a :class:`Volume` (spacing taken
        from its affine, the result returned as a Volume with the same affine).
    model: a :class:`SpatialSegNet`; None uses the installed default weights (an error that says
        how to get a model if there are none).
    mask: voxels to classify (default: the non-zero voxels with enclosed holes filled); everything
        else is background (0).
    atlas: [L, D, H, W] class probabilities for ProbBranch models (default: the model's own).
    spacing: voxel size in mm for a plain array (default 1 mm); ignored for a Volume.
    device: "auto" | "cpu" | "cuda[:N]". precision: "auto" (default: fp32, see precision.py) |
        "fp32" (the exact mode) | "bf16" (~2x faster on CUDA and on CPUs with native bf16 units,
        AMX-BF16 / AVX512-BF16, ~0.2% of brain voxels labelled otherwise; emulated and far slower
        on other CPUs) | "fp16".
    threads: CPU threads for this call (default: torch's setting).
    return_probabilities: labels (output label values) whose softmax probability maps to return
        too (float16), in the order given.
    progress: draw a progress bar on stderr.
    memory_budget: bytes for the engine's working buffers (default 1 GiB on the CPU, a third of
        the free GPU memory); a target that sets the tile sizes, not a hard limit. Results do not
        depend on it.

    Returns label maps of the volume's shape holding the model's output label values
    (``config.label_values``, e.g. Neuromorphometrics codes; class indices when it has none):
    uint8 when they all fit, else uint16;
    as a numpy array for numpy input, a CPU tensor for tensor input (torch.uint8 / torch.uint16),
    a Volume for a Volume; with return_probabilities, a pair (labels, probabilities [K, D, H, W]).
    """
    from .model.io import load_default_model

    affine = None
    if isinstance(volume, Volume):
        affine, spacing, data = volume.affine, volume.spacing, volume.data
    else:
        data = volume
    is_numpy = not isinstance(data, torch.Tensor)
    vol = _volume_tensor(data)
    if model is None:
        model = load_default_model()
    model = _check_model(model)
    spacing = check_spacing(spacing)
    m = _mask_tensor(mask, vol)
    return_probabilities = _probability_classes(model, return_probabilities)
    engine = DenseEngine(model, device=device, precision=precision, threads=threads, memory_budget=memory_budget)
    source = prepare_source(model, vol, spacing)
    labels, probs = engine.run(source, m, atlas, return_probabilities, progress)
    out = to_label_values(model, labels.numpy())
    if not is_numpy:
        out = torch.from_numpy(out)
    if affine is not None:
        out = Volume(out, affine, getattr(volume, "header", None))
    if return_probabilities is not None:
        return out, (probs if not is_numpy else probs.numpy())
    return out
