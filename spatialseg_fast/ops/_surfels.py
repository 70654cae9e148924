"""Surface elements on the voxel-corner grid: the area (3D) or length (2D) of each 2^ndim code.

DeepMind's surface-distance places surface points on the grid of voxel corners. A point's code is
the bit pattern of its 2x2(x2) neighbouring voxels (which are inside the set); codes other than
"none" and "all" are surface points, each weighted by the area of the marching-cubes surface
through its cell (2D: the marching-squares contour length). We derive those tables here from the
geometry instead of storing a hand-written one:

- bits: the voxel at offset (a, b, c) in {0, 1}^3 from the point's lower corner voxel has bit
  ``1 << (7 - (4a + 2b + c))`` (2D: ``1 << (3 - (2b + c))``), as in the library's correlation kernel;
- vertices are the midpoints of the cell edges whose two corners differ; on a face with two
  diagonal inside corners the smaller of the two corner sets (inside or outside; inside on a tie)
  is kept apart, so a code and its complement give the same surface;
- each closed polygon is split into triangles the flattest way (fewest distinct planes, then the
  largest area), and with anisotropic spacing each triangle's area is scaled exactly (the
  cross product's components scale by the products of the other two spacings).

tests/test_metrics_compat.py checks both tables against the library's own for several spacings.
"""
from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

_CORNERS3 = list(itertools.product((0, 1), repeat=3))


def _bit3(corner) -> int:
    a, b, c = corner
    return 1 << (7 - (4 * a + 2 * b + c))


def _face_segments(inside: set, keep_apart: set):
    """Marching-squares segments (pairs of edge midpoints) on the six faces of the unit cell."""
    segments = []
    for axis, side in itertools.product(range(3), (0, 1)):
        u, v = [x for x in range(3) if x != axis]

        def corner(i, j):
            p = [0, 0, 0]
            p[axis], p[u], p[v] = side, i, j
            return tuple(p)

        ring = [corner(0, 0), corner(1, 0), corner(1, 1), corner(0, 1)]
        cuts = {}  # ring position i -> midpoint of edge (ring[i], ring[i+1])
        for i in range(4):
            p, q = ring[i], ring[(i + 1) % 4]
            if (p in inside) != (q in inside):
                cuts[i] = tuple((np.add(p, q) / 2).tolist())
        if len(cuts) == 2:
            segments.append(tuple(cuts.values()))
        elif len(cuts) == 4:  # diagonal pair: cut off each corner of the set kept apart
            segments += [(cuts[(i - 1) % 4], cuts[i]) for i in range(4) if ring[i] in keep_apart]
    return segments


def _loops(segments):
    """Closed polygons from segments whose every vertex has exactly two segments."""
    neighbours = {}
    for a, b in segments:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    loops, seen = [], set()
    for start in neighbours:
        if start in seen:
            continue
        loop, previous, current = [start], None, start
        seen.add(start)
        while True:
            a, b = neighbours[current]
            nxt = b if a == previous else a
            if nxt == start:
                break
            loop.append(nxt)
            seen.add(nxt)
            previous, current = current, nxt
        loops.append(loop)
    return loops


def _triangulations(idx):
    """Every triangulation of the convex-ordered polygon `idx` (tuples of vertex triples)."""
    if len(idx) < 3:
        yield ()
        return
    for m in range(1, len(idx) - 1):
        for left in _triangulations(idx[: m + 1]):
            for right in _triangulations(idx[m:]):
                yield left + right + ((idx[0], idx[m], idx[-1]),)


def _half_cross(p, q, r) -> np.ndarray:
    return 0.5 * np.cross(np.subtract(q, p), np.subtract(r, p))


def _flattest(poly):
    """Area vectors (normal * area, unit cell) of the flattest triangulation of `poly`."""
    def key(tris):
        normals = [_half_cross(poly[a], poly[b], poly[c]) for a, b, c in tris]
        planes = []
        for n in normals:
            unit = n / np.linalg.norm(n)
            if not any(abs(abs(float(unit @ m)) - 1.0) < 1e-9 for m in planes):
                planes.append(unit)
        return len(planes), -sum(np.linalg.norm(n) for n in normals)

    best = min(_triangulations(tuple(range(len(poly)))), key=key)
    return [_half_cross(poly[a], poly[b], poly[c]) for a, b, c in best]


@lru_cache(maxsize=1)
def _area_vectors_3d():
    """For each of the 256 codes, the area vectors of its triangles in a unit cell."""
    table = []
    for code in range(128):  # a code and its complement (255 - code) have the same surface
        inside = {c for c in _CORNERS3 if code & _bit3(c)}
        outside = set(_CORNERS3) - inside
        apart = inside if len(inside) <= len(outside) else outside
        tris = [t for loop in _loops(_face_segments(inside, apart)) for t in _flattest(loop)]
        table.append(np.array(tris, dtype=np.float64).reshape(-1, 3))
    return table + table[::-1]


def surfel_areas(spacing) -> np.ndarray:
    """float64 table code -> surface area (mm^2, 3D: 256 codes) or contour length
    (mm, 2D: 16 codes) of the surface element at a corner point, for voxel `spacing` (mm)."""
    sp = tuple(float(s) for s in spacing)
    if len(sp) == 3:
        scale = np.array([sp[1] * sp[2], sp[0] * sp[2], sp[0] * sp[1]])
        return np.array([np.linalg.norm(v * scale, axis=1).sum() if len(v) else 0.0 for v in _area_vectors_3d()])
    if len(sp) == 2:
        return _contour_lengths(sp)
    raise ValueError(f"surface elements exist in 2D and 3D; got spacing {spacing!r}")


def _contour_lengths(sp) -> np.ndarray:
    """Marching squares on one 2x2 cell: bit of voxel (b, c) is 1 << (3 - (2b + c))."""
    out = np.zeros(16)
    ring = [(0, 0), (0, 1), (1, 1), (1, 0)]
    for code in range(16):
        inside = {p for p in ring if code & (1 << (3 - (2 * p[0] + p[1])))}
        if len(inside) in (0, 4):
            continue
        apart = inside if len(inside) <= 2 else set(ring) - inside
        cuts = {}
        for i in range(4):
            p, q = ring[i], ring[(i + 1) % 4]
            if (p in inside) != (q in inside):
                cuts[i] = np.add(p, q) / 2 * sp
        if len(cuts) == 2:
            segments = [tuple(cuts.values())]
        else:
            segments = [(cuts[(i - 1) % 4], cuts[i]) for i in range(4) if ring[i] in apart]
        out[code] = sum(float(np.linalg.norm(a - b)) for a, b in segments)
    return out
