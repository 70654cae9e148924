"""The real templates on one grid: the model's 1 mm RAS template space.

The grid is the Neuromorphometrics label map's own 1 mm grid (MNI 2009c), reoriented to RAS and
padded by ``PAD`` voxels on every side so that pseudo-subjects grown by the cohort's random
scaling stay inside it. T1 images are resampled onto it (trilinear, anti-aliased from the CAT12
template's 0.5 mm), labels by nearest neighbour (the CAT12 map is already on it: an exact copy).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..volume import Volume, resample
from .fetch import fetch_template

PAD = 6
SOURCES = ("cat12", "icbm2009c")


@dataclass
class Subject:
    """An image and its label map on the template grid."""

    image: np.ndarray
    """[D, H, W] float32 T1 intensities (0 outside the brain)."""
    labels: np.ndarray
    """[D, H, W] uint8 Neuromorphometrics label values (0 = background)."""
    affine: np.ndarray
    name: str = ""

    @property
    def mask(self) -> np.ndarray:
        return self.image > 0


def _load(name: str) -> Volume:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(fetch_template(name))))
    return Volume(np.asanyarray(img.dataobj), img.affine)


@lru_cache(maxsize=1)
def template_grid() -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, affine) of the template space: the label map's grid in RAS, padded by PAD."""
    labels = _load("cat12_labels")
    affine = labels.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, PAD)
    return tuple(int(n) + 2 * PAD for n in labels.shape), affine


@lru_cache(maxsize=1)
def label_table() -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(label values, names): background (0) first, then the 134 structures by label value."""
    names = {0: "background"}
    with open(fetch_template("cat12_label_table"), newline="") as f:
        for row in csv.DictReader(f, delimiter=";"):
            names[int(row["ROIid"])] = row["ROIname"].strip()
    values = tuple(sorted(names))
    return values, tuple(names[v] for v in values)


def load_source(source: str) -> Subject:
    """A real T1 template with the CAT12 Neuromorphometrics labels, on the template grid.

    "cat12": the CAT12 T1 brain template (the labels were drawn in its space; the training source);
    "icbm2009c": the ICBM 2009c T1 brain (never seen in training; the held-out test)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
    shape, affine = template_grid()
    labels = resample(_load("cat12_labels"), shape, affine, kind="label").data.astype(np.uint8)
    t1 = _load("cat12_t1" if source == "cat12" else "icbm2009c_t1")
    image = resample(Volume(np.asarray(t1.data, dtype=np.float32), t1.affine), shape, affine).data
    image = np.clip(image, 0, None).astype(np.float32)
    image[image < 1e-3 * image.max()] = 0.0  # interpolation haze outside the skull-stripped brain
    return Subject(image=image, labels=labels, affine=affine, name=source)
