"""The NIfTI pipeline: any skull-stripped T1 on its own grid in, labels on that same grid out.

load (3D, or 4D with one volume) -> affine registration to the model's template (or none with
``register=False``: the input is then taken to be in template space already, any grid and
orientation) -> trilinear resampling onto the model's template grid -> brain mask (the non-zero
voxels, or a mask file on the input's grid) -> dense segmentation -> labels mapped back onto the
input's own grid and affine (a trilinear-weighted vote of the 8 template voxels around each input
voxel), header kept; before that, the cleanup on the template grid (cleanup.py): for a model with
an atlas, a structure where the atlas gives it probability 0 (at most ``atlas_min_prob``, default 0)
takes an allowed label (``atlas_support=False`` turns it off); for one without (or with that off),
each structure keeps its large pieces and strays take the nearest kept label (``cleanup``) -> optional probability maps (float16, trilinear), a volumes table (mm^3 per
structure) and a QC picture. The default brain mask is the non-zero voxels with enclosed holes
filled (brainmask.py). With ``progress=True`` each stage prints one line with its time on stderr;
a registration whose final similarity is below registration.LOW_SIMILARITY is warned about always.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .brainmask import default_brain_mask
from .cleanup import DEFAULT_ATLAS_MIN_PROB, DEFAULT_KEEP_FRACTION, check_min_prob, remove_islands, remove_outside_atlas
from .inference import segment
from .model.network import SpatialSegNet
from .registration import LOW_SIMILARITY, register as register_to_template, to_subject, to_template
from .volume import Volume, load_volume


@dataclass
class SegmentationResult:
    labels: Volume
    """Label values on the input's grid, with its affine and header."""
    probabilities: dict = field(default_factory=dict)
    """{label value: float16 Volume on the input's grid} for the labels asked for."""
    volumes: list = field(default_factory=list)
    """[(label value, name, mm^3)] for every structure of the model (background excluded)."""
    transform: np.ndarray = field(default_factory=lambda: np.eye(4))
    """Template world -> input world (identity without registration)."""
    seconds: float = 0.0
    brain_voxels: int = 0
    brain_mask: Volume | None = None
    """The brain mask used, on the input's grid (uint8; from skull stripping, --mask or the image)."""
    stripped: bool = False
    """Whether the image was skull-stripped here (deepbet)."""
    stages: dict = field(default_factory=dict)
    """Seconds per pipeline stage: load, skull strip, register, resample, segment, cleanup, map back (as they ran)."""
    registration_similarity: float | None = None
    """The registration's final similarity (registration.Registration.similarity); None without
    registration. Low values flag a failed registration."""


def template_grid_of(model: SpatialSegNet) -> tuple[tuple, np.ndarray]:
    grid = getattr(model, "metadata", {}).get("template")
    if not grid:
        raise ValueError("this model does not record its template grid (train it with `spatialseg train`); "
                         "segment arrays on its grid with spatialseg_fast.segment() instead")
    return tuple(int(n) for n in grid["shape"]), np.asarray(grid["affine"], dtype=np.float64)


def check_mask(mask: Volume, image: Volume, where: str = "mask") -> np.ndarray:
    if tuple(mask.shape) != tuple(image.shape) or not np.allclose(mask.affine, image.affine, atol=1e-3):
        raise ValueError(f"{where} is on another grid than the image (shape {tuple(mask.shape)} vs {tuple(image.shape)}, "
                         "or different affines): give a mask on the image's own grid")
    m = np.asarray(mask.data) != 0
    if not m.any():
        raise ValueError(f"{where} is empty: it selects no voxel")
    return m


def segment_volume(image: Volume, model: SpatialSegNet, *, mask=None, register: bool = True, device="auto",
                   precision: str = "auto", threads=None, probabilities=None, progress: bool = False,
                   skull_strip: str = "auto", cleanup: float | None = None,
                   atlas_support: bool = True, atlas_min_prob: float = DEFAULT_ATLAS_MIN_PROB) -> SegmentationResult:
    """Segment a T1 `image` (a Volume on any grid) with `model`; see the module doc.

    atlas_support: on the template grid, a structure found where the model's atlas gives it
    probability <= atlas_min_prob (default DEFAULT_ATLAS_MIN_PROB) takes an allowed label
    (cleanup.remove_outside_atlas; models with an atlas).
    cleanup: the keep fraction of cleanup.remove_islands applied after it; None (default): 0.3
    (DEFAULT_KEEP_FRACTION) when the atlas rule did not run, else none. Chosen on validation
    subjects (bench/cleanup_choice.py): the atlas rule alone scored best, the islands rule best
    without it. atlas_support=False with cleanup=0 gives the engine's labels as they are.
    Probability maps are not cleaned."""
    from .skullstrip import MODES

    if skull_strip not in MODES:
        raise ValueError(f"skull_strip must be one of {', '.join(MODES)}; got {skull_strip!r}")
    if cleanup is not None and not 0 <= cleanup <= 1:
        raise ValueError(f"cleanup must be a keep fraction in [0, 1] (0: off); got {cleanup}")
    try:
        check_min_prob(atlas_min_prob)
    except ValueError:
        raise ValueError(f"atlas_min_prob must be an atlas probability in [0, 1); got {atlas_min_prob}") from None
    t0 = time.perf_counter()
    stage = _Stages(progress)
    shape, affine = template_grid_of(model)
    data = np.asarray(image.data, dtype=np.float32)
    stripped = False
    if mask is None and _wants_stripping(image, skull_strip):
        from .skullstrip import strip_skull

        brain_vol, mask_vol = strip_skull(image, device=device, threads=threads)
        data, mask = np.asarray(brain_vol.data, dtype=np.float32), mask_vol
        stripped = True
        stage.done("skull strip")
    mask_in = check_mask(mask, image) if mask is not None else default_brain_mask(data)
    if not mask_in.any():
        raise ValueError("the image has no non-zero voxel: nothing to segment")
    if register:
        template = getattr(model, "template", None)
        if template is None:
            raise ValueError("this model carries no registration template: use register=False (--no-register) "
                             "with inputs already in its template space")
        found = register_to_template(Volume(np.where(mask_in, data, 0.0).astype(np.float32), image.affine), template)
        transform, similarity = found.transform, found.similarity
        stage.done("register", f"similarity {similarity:.3f}")
        if not similarity >= LOW_SIMILARITY:
            print(f"warning: the registration to the template looks failed (similarity {similarity:.2f}, below "
                  f"{LOW_SIMILARITY}): check the image's orientation and skull stripping, and the QC picture",
                  file=sys.stderr, flush=True)
    else:
        transform, similarity = np.eye(4), None
    masked = np.where(mask_in, data, 0.0).astype(np.float32)  # nothing outside the mask is read
    moved = to_template(Volume(masked, image.affine), shape, affine, transform).data
    brain = to_template(Volume(mask_in.astype(np.uint8), image.affine), shape, affine, transform, kind="label").data > 0
    # (no `moved != 0` here: zero-valued voxels inside the mask, e.g. filled ventricle cores, are brain)
    if not brain.any():
        raise ValueError("after resampling onto the template grid no brain voxel is left: is the image skull-stripped "
                         "and in a plausible position (or is --no-register wrong for it)?")
    stage.done("resample")
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    wanted = None if not probabilities else [int(v) for v in probabilities]
    out = segment(moved, model, mask=brain, spacing=spacing, device=device, precision=precision, threads=threads,
                  return_probabilities=wanted, progress=progress)
    labels_t, probs_t = out if wanted else (out, None)
    stage.done("segment")
    atlas = getattr(model, "atlas", None) if atlas_support else None
    if cleanup is None:
        cleanup = 0.0 if atlas is not None else DEFAULT_KEEP_FRACTION
    if atlas is not None or cleanup > 0:
        labels_t = np.asarray(labels_t)
        if atlas is not None:
            labels_t = remove_outside_atlas(labels_t, atlas, model.config.output_values(), min_prob=atlas_min_prob,
                                            spacing=spacing)
        if cleanup > 0:
            labels_t = remove_islands(labels_t, keep_fraction=cleanup, spacing=spacing)
        stage.done("cleanup")
    # labels back by a trilinear-weighted vote of the 8 template voxels around each input voxel: on a
    # rotated or finer grid it keeps thin structures that nearest neighbour frays (bench_registration.py)
    back = to_subject(Volume(np.asarray(labels_t), affine), image.shape, image.affine, transform, kind="label_linear")
    back_data = np.where(mask_in, back.data, 0).astype(np.asarray(labels_t).dtype)  # the vote can reach a voxel past the mask's edge
    labels = Volume(back_data, image.affine, image.header)
    probs = {}
    if wanted:
        p = probs_t.numpy() if isinstance(probs_t, torch.Tensor) else np.asarray(probs_t)
        for value, plane in zip(wanted, p):
            moved_p = to_subject(Volume(plane.astype(np.float32), affine), image.shape, image.affine, transform,
                                 kind="intensity")
            probs[value] = Volume(np.clip(moved_p.data, 0, 1).astype(np.float16), image.affine, image.header)
    stage.done("map back")
    return SegmentationResult(labels=labels, probabilities=probs, volumes=structure_volumes(labels, model), transform=transform,
                              brain_mask=Volume(mask_in.astype(np.uint8), image.affine, image.header), stripped=stripped,
                              seconds=time.perf_counter() - t0, brain_voxels=int(brain.sum()), stages=stage.seconds,
                              registration_similarity=similarity)


def _wants_stripping(image: Volume, mode: str) -> bool:
    """resolve_skull_strip, with auto's reason put before the missing-extra error."""
    from .skullstrip import MISSING_EXTRA, SkullStripUnavailableError, deepbet_available, head_or_brain, resolve_skull_strip

    if mode != "auto":
        strip = resolve_skull_strip(image, mode)
        if strip and not deepbet_available():
            raise SkullStripUnavailableError(MISSING_EXTRA)
        return strip
    check = head_or_brain(image)
    if check.is_head and not deepbet_available():
        raise SkullStripUnavailableError(f"this looks like a whole head ({check.reason}); {MISSING_EXTRA}")
    return check.is_head


class _Stages:
    """One line per finished pipeline stage with its seconds (stderr), when enabled."""

    def __init__(self, enabled: bool):
        self.enabled, self.t, self.seconds = enabled, time.perf_counter(), {}

    def done(self, name: str, note: str = "") -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self.t
        if self.enabled:
            print(f"  {name}: {now - self.t:.1f} s" + (f" ({note})" if note else ""), file=sys.stderr, flush=True)
        self.t = now


def structure_volumes(labels: Volume, model: SpatialSegNet) -> list:
    """[(label value, name, mm^3)] of every structure of the model (background excluded) in a
    label map on any grid (voxel volume from its affine)."""
    voxel_mm3 = float(abs(np.linalg.det(labels.affine[:3, :3])))
    values = model.config.output_values()
    counts = np.bincount(np.asarray(labels.data).ravel().astype(np.int64), minlength=max(values) + 1)
    names = model.config.label_table()
    return [(v, names.get(v, str(v)), float(counts[v]) * voxel_mm3) for v in values if v != 0]


def segment_file(path, model: SpatialSegNet, *, mask_path=None, **kwargs) -> SegmentationResult:
    t0 = time.perf_counter()
    image = load_volume(path)
    mask = load_volume(mask_path, kind="mask") if mask_path is not None else None
    if mask is not None:
        check_mask(mask, image, f"mask {mask_path}")
    load_s = time.perf_counter() - t0
    result = segment_volume(image, model, mask=mask, **kwargs)
    result.stages = {"load": load_s, **result.stages}
    result.seconds += load_s
    return result
