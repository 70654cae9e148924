"""A model's label table in the formats that image viewers read.

- ``freesurfer_lut``: FreeSurfer's colour look-up table (``FreeSurferColorLUT.txt`` layout:
  ``value name R G B A`` per line, names without spaces). freeview loads it with
  ``freeview -v t1.nii.gz labels.nii.gz:colormap=lut:lut=FILE``; FSLeyes and 3D Slicer read the
  same layout as a colour table.
- ``itksnap_labels``: ITK-SNAP's label description file (Segmentation > Import Label
  Descriptions): ``IDX R G B A VIS MSH "LABEL"`` per line.

Colours are a function of the label value alone (not of the model or the order of the table), so
one structure keeps its colour across models and files; neighbouring values get distant hues
(golden-ratio steps) with three levels of lightness, and 0 is black/transparent.
"""
from __future__ import annotations

import colorsys
import re

GOLDEN = 0.618033988749895


def label_colour(value: int) -> tuple[int, int, int]:
    """A stable RGB colour (0-255) for a label value; (0, 0, 0) for background."""
    if value == 0:
        return (0, 0, 0)
    hue = (value * GOLDEN) % 1.0
    lightness = (0.45, 0.6, 0.35)[value % 3]
    saturation = (0.85, 0.65, 0.95)[(value // 3) % 3]
    r, g, b = colorsys.hls_to_rgb(hue, lightness, saturation)
    return (round(255 * r), round(255 * g), round(255 * b))


def _lut_name(name: str) -> str:
    """FreeSurfer LUT names are one token: spaces and other separators become underscores."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name.strip()).strip("_") or "unnamed"


def rows(table: dict) -> list[tuple[int, str, tuple[int, int, int]]]:
    """[(value, name, rgb)] sorted by value, background first."""
    table = dict(table)
    table.setdefault(0, "background")
    return [(int(v), str(table[v]), label_colour(int(v))) for v in sorted(table)]


def freesurfer_lut(table: dict) -> str:
    lines = ["# spatialseg_fast label table (FreeSurferColorLUT layout)", "#No. Label Name" + " " * 30 + "R   G   B   A"]
    for value, name, (r, g, b) in rows(table):
        lines.append(f"{value:<5d}{_lut_name(name):<40s}{r:<4d}{g:<4d}{b:<4d}0")
    return "\n".join(lines) + "\n"


def itksnap_labels(table: dict) -> str:
    head = ["################################################",
            "# ITK-SnAP Label Description File (written by spatialseg_fast)",
            "# Fields: IDX -R- -G- -B- -A-- VIS MSH LABEL",
            "################################################"]
    lines = []
    for value, name, (r, g, b) in rows(table):
        alpha, vis = (0, 0) if value == 0 else (1, 1)
        label = "Clear Label" if value == 0 else name.replace('"', "'")
        lines.append(f"{value:5d} {r:5d} {g:5d} {b:5d} {alpha:8d} {vis:2d} {vis:2d}    \"{label}\"")
    return "\n".join(head + lines) + "\n"


LUT_FILE = "spatialseg_labels_FreeSurferColorLUT.txt"
ITKSNAP_FILE = "spatialseg_labels_itksnap.txt"


def write_label_tables(folder, table: dict) -> list:
    """Write both tables into `folder` (atomically); returns their paths."""
    from pathlib import Path

    from ._atomic import atomic_text

    folder = Path(folder)
    out = [folder / LUT_FILE, folder / ITKSNAP_FILE]
    atomic_text(out[0], freesurfer_lut(table))
    atomic_text(out[1], itksnap_labels(table))
    return out
