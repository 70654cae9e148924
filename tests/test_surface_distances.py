"""surface_distances: hand-computed cases, every backend against scipy's EDT, properties."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from spatialseg_fast.ops import surface_distances

from conftest import available_backends

ndimage = pytest.importorskip("scipy.ndimage")
BACKENDS = [b for b in available_backends() if b in ("cpp", "torch")]


def scipy_distances(pred, ref, label, spacing, connectivity):
    """Oracle: medpy's border (erosion, edge = background) and scipy's exact EDT."""
    structure = ndimage.generate_binary_structure(ref.ndim, connectivity)
    X, Y = ref == label, pred == label
    bX = X ^ ndimage.binary_erosion(X, structure, border_value=0)
    bY = Y ^ ndimage.binary_erosion(Y, structure, border_value=0)
    if not bX.any() or not bY.any():
        return np.zeros(0), np.zeros(0)
    return ndimage.distance_transform_edt(~bY, sampling=spacing)[bX], ndimage.distance_transform_edt(~bX, sampling=spacing)[bY]


def blobs(shape, labels, seed, size=5):
    rng = np.random.default_rng(seed)
    noisy = rng.integers(0, labels, shape)
    return ndimage.median_filter(noisy, size=size).astype(np.int16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_cubes_a_known_distance_apart(backend):
    ref, pred = np.zeros((14, 6, 6), np.uint8), np.zeros((14, 6, 6), np.uint8)
    ref[2:5, 2:5, 2:5] = 1
    pred[7:10, 2:5, 2:5] = 1  # the same cube 5 voxels further along axis 0
    d = surface_distances(pred, ref, spacing=(1.5, 1.0, 1.0), backend=backend)
    assert d.labels.tolist() == [1]
    assert d.counts.tolist() == [[27, 27, 0, 26, 26]]
    # farthest layer: 5 voxels; directed means over 26 border voxels: (9*5 + 8*4 + 9*3) / 26 = 4
    assert d.hausdorff()[0] == pytest.approx(7.5)
    assert d.directed_mean("ref_to_pred")[0] == pytest.approx(6.0)
    assert d.directed_mean("pred_to_ref")[0] == pytest.approx(6.0)
    assert d.msd()[0] == pytest.approx(6.0) and d.assd()[0] == pytest.approx(6.0)
    assert d.dice()[0] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_voxels_and_identical_maps(backend):
    ref, pred = np.zeros((5, 7, 9), np.int32), np.zeros((5, 7, 9), np.int32)
    ref[1, 2, 3] = 4
    pred[3, 5, 3] = 4
    d = surface_distances(pred, ref, spacing=(2.0, 1.0, 3.0), backend=backend)
    assert d.hausdorff()[0] == pytest.approx(np.hypot(2 * 2.0, 3 * 1.0))
    same = surface_distances(ref, ref, backend=backend)
    assert same.hausdorff()[0] == 0 and same.dice()[0] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_sphere_against_itself_shifted(backend):
    z, y, x = np.mgrid[:21, :21, :21]
    ball = lambda c: ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= 36).astype(np.uint8)
    d = surface_distances(ball((10, 10, 12)), ball((10, 10, 10)), backend=backend)
    a, b = scipy_distances(ball((10, 10, 12)), ball((10, 10, 10)), 1, (1, 1, 1), 1)
    assert d.hausdorff()[0] == pytest.approx(max(a.max(), b.max()))
    assert 1.9 < d.hausdorff()[0] < 2.3  # a 2-voxel shift


@pytest.mark.parametrize("backend", BACKENDS)
def test_label_touching_the_edge_and_absent_labels(backend):
    ref = np.ones((6, 7, 8), np.uint8)  # fills the image: its border is the image's outer layer
    pred = ref.copy()
    pred[:, :, 6:] = 2
    ref[0, 0, 0] = 3  # only in ref
    d = surface_distances(pred, ref, labels=[1, 2, 3, 9], backend=backend)
    for i, label in enumerate([1, 2, 3]):
        a, b = scipy_distances(pred, ref, label, (1, 1, 1), 1)
        assert np.allclose(np.sort(d.ref_to_pred[i]), np.sort(a)) and np.allclose(np.sort(d.pred_to_ref[i]), np.sort(b))
    assert d.counts[0, 3] == 6 * 7 * 8 - 4 * 5 * 6 - 1  # the outer layer less the corner voxel (label 3)
    assert np.isnan(d.hausdorff()[2]) and d.dice()[2] == 0  # in one map only
    assert np.isnan(d.hausdorff()[3]) and np.isnan(d.dice()[3])  # in neither


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ndim, connectivity", [(3, 1), (3, 2), (3, 3), (2, 1), (2, 2)])
def test_against_scipy_on_random_label_maps(backend, ndim, connectivity):
    shape = (19, 23, 16)[:ndim] if ndim == 3 else (41, 37)
    spacing = (1.2, 0.8, 1.7)[:ndim]
    ref, pred = blobs(shape, 6, 1), blobs(shape, 6, 2)
    d = surface_distances(torch.from_numpy(pred), ref, spacing=spacing, connectivity=connectivity, backend=backend)
    assert sorted(d.labels.tolist()) == sorted(set(np.unique(np.concatenate([ref.ravel(), pred.ravel()]))) - {0})
    for i, label in enumerate(d.labels):
        a, b = scipy_distances(pred, ref, label, spacing, connectivity)
        # each voxel's own distance, in C order of the border voxels
        assert np.allclose(d.ref_to_pred[i], a, atol=1e-12) and np.allclose(d.pred_to_ref[i], b, atol=1e-12)
        assert d.counts[i, 0] == (ref == label).sum() and d.counts[i, 2] == ((ref == label) & (pred == label)).sum()


@pytest.mark.skipif("cpp" not in BACKENDS, reason="needs the C++ extension")
@pytest.mark.parametrize("threads", [1, 2])
def test_cpp_threads_agree_with_reference(threads):
    ref, pred = blobs((17, 21, 19), 9, 3, size=3), blobs((17, 21, 19), 9, 4, size=3)
    got = surface_distances(pred, ref, spacing=(1, 1, 1.2), backend="cpp", num_threads=threads)
    want = surface_distances(pred, ref, spacing=(1, 1, 1.2), backend="torch")
    assert np.array_equal(got.counts, want.counts)
    for a, b in zip(got.ref_to_pred + got.pred_to_ref, want.ref_to_pred + want.pred_to_ref):
        assert np.allclose(a, b, atol=1e-12)
    got = surface_distances(pred, ref, spacing=(1, 1, 1.2), surface="corner", backend="cpp", num_threads=threads)
    want = surface_distances(pred, ref, spacing=(1, 1, 1.2), surface="corner", backend="torch")
    assert np.array_equal(got.counts, want.counts)
    for a, b in zip(got.ref_to_pred + got.pred_to_ref, want.ref_to_pred + want.pred_to_ref):
        assert np.allclose(a, b, atol=1e-12)
    for a, b in zip(got.ref_areas + got.pred_areas, want.ref_areas + want.pred_areas):
        assert np.array_equal(a, b)


def scipy_corner_distances(pred, ref, label, spacing):
    """Oracle for surface="corner": corner codes by ndimage.correlate (constant 0 outside), exact
    EDT over the corner grid; ((distances, codes) ref -> pred, (distances, codes) pred -> ref)."""
    ndim = ref.ndim
    weights = (1 << (2**ndim - 1 - np.arange(2**ndim))).reshape((2,) * ndim)

    def codes(mask):
        padded = np.pad(mask.astype(np.int64), [(0, 1)] * ndim)  # point p sees voxels p-1 .. p
        return ndimage.correlate(padded, weights, mode="constant", cval=0)

    full = 2 ** (2**ndim) - 1
    cX, cY = codes(ref == label), codes(pred == label)
    bX, bY = (cX != 0) & (cX != full), (cY != 0) & (cY != full)
    if not bX.any() or not bY.any():
        return (np.zeros(0), cX[bX]), (np.zeros(0), cY[bY])
    dX = ndimage.distance_transform_edt(~bY, sampling=spacing)[bX]
    dY = ndimage.distance_transform_edt(~bX, sampling=spacing)[bY]
    return (dX, cX[bX]), (dY, cY[bY])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, spacing", [((13, 17, 11), (1.0, 0.8, 1.3)), ((23, 19), (0.7, 1.5))])
def test_corner_surface_matches_scipy(backend, shape, spacing):
    from spatialseg_fast.ops._surfels import surfel_areas

    ref, pred = blobs(shape, 5, 11, size=3), blobs(shape, 5, 12, size=3)
    ref[(0,) * len(shape)] = 4  # a label touching the corner of the image
    d = surface_distances(pred, ref, labels=[1, 2, 3, 4, 7], spacing=spacing, surface="corner", backend=backend)
    table = surfel_areas(spacing)
    for i, label in enumerate([1, 2, 3, 4, 7]):
        (a, code_a), (b, code_b) = scipy_corner_distances(pred, ref, label, spacing)
        assert np.allclose(d.ref_to_pred[i], a, atol=1e-12) and np.allclose(d.pred_to_ref[i], b, atol=1e-12)
        assert np.array_equal(d.ref_areas[i], table[code_a]) and np.array_equal(d.pred_areas[i], table[code_b])
        assert d.counts[i, 3] == len(code_a) and d.counts[i, 4] == len(code_b)
        assert d.counts[i, 2] == ((ref == label) & (pred == label)).sum()


def test_corner_surface_areas_of_a_box():
    """A box's corner-grid surface area is its true surface area (flat faces, spacing scaled)."""
    m = np.zeros((9, 10, 11), np.uint8)
    m[2:6, 3:8, 1:10] = 1  # 4 x 5 x 9 voxels
    sp = (1.5, 1.0, 2.0)
    d = surface_distances(m, m, labels=[1], spacing=sp, surface="corner")
    x, y, z = 4 * 1.5, 5 * 1.0, 9 * 2.0
    # edges and corners are bevelled by half a voxel: the surfel area is below the box's, and
    # equals the bevelled box's (faces shrunk by one voxel + bevel strips + corner triangles)
    assert d.ref_areas[0].sum() < 2 * (x * y + y * z + x * z)
    assert np.all(d.ref_to_pred[0] == 0)
    faces = 2 * ((x - 1.5) * (y - 1.0) + (y - 1.0) * (z - 2.0) + (x - 1.5) * (z - 2.0))
    strips = 4 * ((x - 1.5) * np.hypot(1.0, 2.0) / 2 + (y - 1.0) * np.hypot(1.5, 2.0) / 2 + (z - 2.0) * np.hypot(1.5, 1.0) / 2)
    corners = 8 * 0.5 * np.linalg.norm(np.cross([-0.75, 0.5, 0], [-0.75, 0, 1.0]))
    assert d.ref_areas[0].sum() == pytest.approx(faces + strips + corners, rel=1e-12)


def test_corner_surface_rejects_triton():
    with pytest.raises(ValueError, match="corner"):
        surface_distances(np.ones((3, 3, 3), np.uint8), np.ones((3, 3, 3), np.uint8), surface="corner", backend="triton")
    with pytest.raises(ValueError, match="surface"):
        surface_distances(np.ones((3, 3, 3), np.uint8), np.ones((3, 3, 3), np.uint8), surface="mesh")


def test_label_order_is_kept():
    ref, pred = blobs((15, 15, 15), 5, 5), blobs((15, 15, 15), 5, 6)
    a = surface_distances(pred, ref, labels=[3, 1, 2])
    b = surface_distances(pred, ref, labels=[1, 2, 3])
    assert a.labels.tolist() == [3, 1, 2]
    assert np.array_equal(a.counts, b.counts[[2, 0, 1]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pred=np.zeros((3, 3, 3)), ref=np.zeros((3, 3, 4))), "same shape"),
        (dict(pred=np.zeros((3, 3, 3, 2)), ref=np.zeros((3, 3, 3, 2))), "2D or 3D"),
        (dict(pred=np.full((3, 3), 0.5), ref=np.zeros((3, 3))), "integer labels; got float64 with non-finite or non-integer"),
        (dict(pred=np.zeros((0, 3)), ref=np.zeros((0, 3))), "empty"),
        (dict(spacing=(1, 1)), "spacing"),
        (dict(spacing=(1, -1, 1)), "spacing"),
        (dict(connectivity=4), "connectivity"),
        (dict(labels=[1, 1]), "repeat"),
        (dict(labels=[1.5]), "integers"),
        (dict(labels=[]), "labels is empty"),
    ],
)
def test_bad_inputs(kwargs, match):
    args = dict(pred=np.zeros((3, 3, 3), np.uint8), ref=np.zeros((3, 3, 3), np.uint8))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        surface_distances(args.pop("pred"), args.pop("ref"), **args)


maps = st.integers(0, 2**31 - 1).map(lambda seed: (blobs((9, 10, 11), 4, seed, 3), blobs((9, 10, 11), 4, seed + 1, 3)))


@settings(max_examples=25, deadline=None)
@given(pair=maps, sx=st.floats(0.5, 2.0))
def test_properties(pair, sx):
    pred, ref = pair
    spacing = (sx, 1.0, 1.3)
    d = surface_distances(pred, ref, labels=[1, 2, 3], spacing=spacing)
    e = surface_distances(ref, pred, labels=[1, 2, 3], spacing=spacing)
    hd, hd95 = d.hausdorff(), d.pooled_percentile(95)
    ok = ~np.isnan(hd)
    assert np.all(hd[ok] >= hd95[ok] - 1e-12) and np.all(hd95[ok] >= 0)
    assert np.array_equal(np.isnan(hd), np.isnan(e.hausdorff()))
    assert np.allclose(hd[ok], e.hausdorff()[ok]) and np.allclose(d.msd()[ok], e.msd()[ok])
    dice = d.dice()
    assert np.all((dice[~np.isnan(dice)] >= 0) & (dice[~np.isnan(dice)] <= 1))
    same = surface_distances(ref, ref, labels=[1, 2, 3], spacing=spacing)
    present = ~np.isnan(same.hausdorff())
    assert np.all(same.hausdorff()[present] == 0) and np.all(same.dice()[present] == 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_and_huge_label_values(backend):
    ref, pred = blobs((13, 14, 15), 4, 8, 3).astype(np.int64), blobs((13, 14, 15), 4, 9, 3).astype(np.int64)
    values = np.array([-7, 0, 5, 70_000_000])
    ref2, pred2 = values[ref], values[pred]
    d = surface_distances(pred2, ref2, spacing=(1, 2, 1), backend=backend)
    assert d.labels.tolist() == sorted({-7, 5, 70_000_000} & set(np.unique(np.concatenate([ref2.ravel(), pred2.ravel()]))))
    for i, label in enumerate(d.labels):
        a, b = scipy_distances(pred2, ref2, label, (1, 2, 1), 1)
        assert np.allclose(d.ref_to_pred[i], a) and np.allclose(d.pred_to_ref[i], b)


@pytest.mark.skipif("triton" not in available_backends(), reason="needs triton")
@pytest.mark.parametrize("ndim, connectivity", [(3, 1), (3, 3), (2, 2)])
def test_triton_against_reference(ndim, connectivity):
    from conftest import device_for

    shape = (9, 11, 8) if ndim == 3 else (17, 15)
    spacing = (1.2, 0.8, 1.7)[:ndim] if ndim == 3 else (0.9, 1.4)
    ref, pred = blobs(shape, 4, 10, 3), blobs(shape, 4, 11, 3)
    dev = device_for("triton")
    got = surface_distances(torch.from_numpy(pred).to(dev), torch.from_numpy(ref).to(dev), spacing=spacing,
                            connectivity=connectivity, backend="triton")
    want = surface_distances(pred, ref, spacing=spacing, connectivity=connectivity, backend="torch")
    assert got.labels.tolist() == want.labels.tolist() and np.array_equal(got.counts, want.counts)
    for a, b in zip(got.ref_to_pred + got.pred_to_ref, want.ref_to_pred + want.pred_to_ref):
        assert np.allclose(a, b, atol=1e-12)


# -- the C++ kernel's two strategies (per-label boxes, whole-volume search): same numbers ----------
CPP = pytest.mark.skipif("cpp" not in BACKENDS, reason="needs the C++ extension")


@CPP
@pytest.mark.parametrize("strategy", ["boxes", "search"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("ndim, connectivity, spacing", [(3, 1, (1.2, 0.8, 1.7)), (3, 3, (1.0, 1.0, 1.0)),
                                                         (3, 2, (0.5, 3.0, 1.0)), (2, 1, (0.9, 1.4)), (2, 2, (1.0, 1.0))])
def test_cpp_strategies_against_scipy(strategy, threads, ndim, connectivity, spacing):
    shape = (17, 23, 13) if ndim == 3 else (37, 29)
    ref, pred = blobs(shape, 7, 11, size=3), blobs(shape, 7, 12, size=3)
    d = surface_distances(pred, ref, spacing=spacing, connectivity=connectivity, backend="cpp", strategy=strategy,
                          num_threads=threads)
    for i, label in enumerate(d.labels):
        a, b = scipy_distances(pred, ref, label, spacing, connectivity)
        assert np.allclose(d.ref_to_pred[i], a, atol=1e-12) and np.allclose(d.pred_to_ref[i], b, atol=1e-12)
        assert d.counts[i].tolist() == [(ref == label).sum(), (pred == label).sum(),
                                        ((ref == label) & (pred == label)).sum(), len(a), len(b)]


@CPP
@pytest.mark.parametrize("threads", [1, 2])
def test_search_points_beyond_the_offset_table(threads):
    """The search looks 16 voxels far; farther points go to brute force (few) or the box EDT (many)."""
    ref, pred = np.zeros((70, 64, 66), np.int32), np.zeros((70, 64, 66), np.int32)
    ref[:8, :40, :60], pred[8:, :40, :60] = 3, 3  # fill most of the volume with two more labels ...
    ref[8:, :40, :60], pred[:8, :40, :60] = 4, 4
    ref[2:20, 45:62, 2:20] = 1  # label 1: a block, predicted 40 voxels away (every point far: box EDT)
    pred[50:68, 45:62, 40:60] = 1
    ref[30:40, 45:55, 30:40] = 2  # label 2: predicted in place plus a one-voxel island far off (brute force)
    pred[30:40, 45:55, 30:40] = 2
    pred[69, 0, 65] = 2
    spacing = (1.1, 0.9, 1.3)
    want = surface_distances(pred, ref, spacing=spacing, backend="torch")
    for strategy in ("boxes", "search"):
        got = surface_distances(pred, ref, spacing=spacing, backend="cpp", strategy=strategy, num_threads=threads)
        assert np.array_equal(got.counts, want.counts)
        for a, b in zip(got.ref_to_pred + got.pred_to_ref, want.ref_to_pred + want.pred_to_ref):
            assert len(a) == len(b) and np.allclose(a, b, atol=1e-12)
    assert want.hausdorff()[1] > 16 * 1.3 and want.directed_max("ref_to_pred")[0] > 16 * 1.3  # both really far


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy"):
        surface_distances(np.zeros((3, 3, 3), np.uint8), np.zeros((3, 3, 3), np.uint8), strategy="fast")


@CPP
@pytest.mark.parametrize("offset", [-5, 40000, 1 << 25])
def test_search_with_negative_many_and_huge_label_values(offset):
    """Negative values, ids past int16 (the search's wide border maps) and values past the lookup table."""
    ref, pred = blobs((15, 18, 16), 5, 21, size=3), blobs((15, 18, 16), 5, 22, size=3)
    ref, pred = ref.astype(np.int64) + offset, pred.astype(np.int64) + offset
    labels = None if offset != 40000 else list(range(offset, offset + 5)) + list(range(1, 32800))
    want = surface_distances(pred, ref, labels=labels, backend="torch") if offset != 40000 else None
    got = surface_distances(pred, ref, labels=labels, backend="cpp", strategy="search")
    boxes = surface_distances(pred, ref, labels=labels, backend="cpp", strategy="boxes")
    want = want or boxes
    assert np.array_equal(got.labels, want.labels) and np.array_equal(got.counts, want.counts)
    for a, b in zip(got.ref_to_pred + got.pred_to_ref, want.ref_to_pred + want.pred_to_ref):
        assert len(a) == len(b) and np.allclose(a, b, atol=1e-12)


def test_search_refuses_the_corner_surface():
    with pytest.raises(ValueError, match="border voxels only"):
        surface_distances(np.ones((3, 3, 3), np.uint8), np.ones((3, 3, 3), np.uint8), surface="corner", strategy="search")
