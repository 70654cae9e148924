"""Quality-control picture: three orthogonal slices of the image with the labels overlaid, as a PNG
written by a few lines of zlib (no imaging dependency)."""
from __future__ import annotations

import struct
import zlib

import numpy as np


def label_colours(n: int) -> np.ndarray:
    """[n, 3] uint8 colours, distinct and stable per label index (0 = black)."""
    rng = np.random.default_rng(12345)
    colours = rng.integers(40, 256, (n, 3)).astype(np.uint8)
    colours[0] = 0
    return colours


def write_png(path, rgb: np.ndarray) -> None:
    """Write an [H, W, 3] uint8 image as PNG."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def _panel(image2d: np.ndarray, labels2d: np.ndarray, colours: np.ndarray, lut: np.ndarray, alpha: float) -> np.ndarray:
    hi = np.percentile(image2d[image2d > 0], 99) if np.any(image2d > 0) else 1.0
    grey = np.clip(image2d / max(hi, 1e-12), 0, 1)[..., None] * 255.0
    colour = colours[lut[labels2d]].astype(np.float64)
    on = (labels2d > 0)[..., None]
    return np.where(on, (1 - alpha) * grey + alpha * colour, grey).astype(np.uint8)


def qc_picture(image: np.ndarray, labels: np.ndarray, spacing, path, *, label_values=None, alpha: float = 0.5,
               height: int = 256) -> None:
    """Axial, coronal and sagittal slices through the labels' centre, side by side, each scaled to
    `height` pixels (aspect from the voxel spacing; array axes taken as RAS, as after to_ras)."""
    image, labels = np.asarray(image, dtype=np.float64), np.asarray(labels)
    values = np.unique(labels) if label_values is None else np.asarray(label_values)
    lut = np.zeros(int(max(values.max(), labels.max())) + 1, dtype=np.int64)
    lut[values] = np.arange(len(values))
    colours = label_colours(len(values))
    inside = np.argwhere(labels > 0)
    c = inside.mean(0).round().astype(int) if len(inside) else np.array(labels.shape) // 2
    sx, sy, sz = spacing
    views = [  # (2D image, 2D labels, (row spacing, column spacing)), displayed with superior/anterior up
        (image[:, :, c[2]].T[::-1], labels[:, :, c[2]].T[::-1], (sy, sx)),  # axial
        (image[:, c[1], :].T[::-1], labels[:, c[1], :].T[::-1], (sz, sx)),  # coronal
        (image[c[0], :, :].T[::-1], labels[c[0], :, :].T[::-1], (sz, sy)),  # sagittal
    ]
    panels = []
    for img2d, lab2d, (sr, sc) in views:
        rows = np.clip((np.arange(height) * img2d.shape[0] / height).astype(int), 0, img2d.shape[0] - 1)
        width = max(1, int(round(height * (img2d.shape[1] * sc) / (img2d.shape[0] * sr))))
        cols = np.clip((np.arange(width) * img2d.shape[1] / width).astype(int), 0, img2d.shape[1] - 1)
        panels.append(_panel(img2d[np.ix_(rows, cols)], lab2d[np.ix_(rows, cols)], colours, lut, alpha))
        panels.append(np.zeros((height, 4, 3), np.uint8))
    write_png(path, np.concatenate(panels[:-1], axis=1))
