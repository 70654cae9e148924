"""The drop-in modules against the real libraries on random multi-label volumes (CI installs
them through the test extra; a library that cannot be imported skips its tests)."""
import warnings

import numpy as np
import pytest
import torch

ndimage = pytest.importorskip("scipy.ndimage")


def label_pair(seed, shape=(20, 22, 18), classes=5):
    rng = np.random.default_rng(seed)
    a = ndimage.median_filter(rng.integers(0, classes, shape), 5)
    b = ndimage.median_filter(rng.integers(0, classes, shape), 5)
    return a, b


# -- medpy ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fn", ["dc", "hd", "hd95", "asd", "assd"])
def test_medpy_same_numbers(seed, fn):
    medpy = pytest.importorskip("medpy.metric.binary")
    from spatialseg_fast.metrics import medpy as ours

    a, b = label_pair(seed)
    for label in (1, 2):
        result, reference = a == label, b == label
        kw = {} if fn == "dc" else dict(voxelspacing=(1.2, 0.7, 1.5), connectivity=seed % 3 + 1)
        want, got = getattr(medpy, fn)(result, reference, **kw), getattr(ours, fn)(result, reference, **kw)
        assert type(got) is type(want)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
        if fn != "dc":  # 2D, scalar spacing
            kw2 = dict(voxelspacing=2.0)
            assert getattr(ours, fn)(result[5], reference[5], **kw2) == pytest.approx(getattr(medpy, fn)(result[5], reference[5], **kw2), rel=1e-12)


def test_medpy_empty_cases_match():
    medpy = pytest.importorskip("medpy.metric.binary")
    from spatialseg_fast.metrics import medpy as ours

    full, empty = np.ones((6, 6, 6), bool), np.zeros((6, 6, 6), bool)
    for fn in ("hd", "hd95", "asd", "assd"):
        for args in ((empty, full), (full, empty)):
            with pytest.raises(RuntimeError) as want:
                getattr(medpy, fn)(*args)
            with pytest.raises(RuntimeError) as got:
                getattr(ours, fn)(*args)
            assert str(got.value) == str(want.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want, got = medpy.dc(empty, empty), ours.dc(empty, empty)
    assert (np.isnan(want) and np.isnan(got)) or want == got


# -- MONAI ------------------------------------------------------------------------------------
def one_hot(lab, classes):
    return torch.nn.functional.one_hot(torch.from_numpy(lab).long(), classes).movedim(-1, 0)[None].float()


@pytest.mark.parametrize("seed", range(3))
def test_monai_same_numbers(seed):
    monai = pytest.importorskip("monai.metrics")
    from spatialseg_fast.metrics import monai as ours

    C = 5
    a, b = label_pair(seed, classes=C - 1)
    if seed == 1:
        a[a == 2] = 0  # a class missing from one prediction
    if seed == 2:
        a[a == 3] = 0
        b[b == 3] = 0  # and from both maps
    yp, yt = torch.cat([one_hot(a, C), one_hot(b, C)]), torch.cat([one_hot(b, C), one_hot(a, C)])
    overlapping = yp.clone()
    overlapping[0, 1] = torch.from_numpy(ndimage.binary_dilation(a == 1)).float()  # channels that overlap
    cases = [
        ("compute_hausdorff_distance", dict()),
        ("compute_hausdorff_distance", dict(percentile=95)),
        ("compute_hausdorff_distance", dict(directed=True, percentile=50)),
        ("compute_hausdorff_distance", dict(spacing=(1.2, 0.7, 1.5), include_background=True)),
        ("compute_average_surface_distance", dict()),
        ("compute_average_surface_distance", dict(symmetric=True, spacing=[(1, 1, 1), (2, 1, 1)])),
        ("compute_dice", dict()),
        ("compute_dice", dict(include_background=False, ignore_empty=False)),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, kw in cases:
            for pred in (yp, overlapping):
                want, got = getattr(monai, name)(pred, yt, **kw), getattr(ours, name)(pred, yt, **kw)
                assert got.shape == want.shape and got.dtype == want.dtype
                assert torch.allclose(got, want, rtol=1e-6, atol=0, equal_nan=True), (name, kw)


def test_monai_2d_and_numpy_inputs():
    monai = pytest.importorskip("monai.metrics")
    from spatialseg_fast.metrics import monai as ours

    a, b = label_pair(7, (30, 26), classes=3)
    yp, yt = one_hot(a, 3).numpy(), one_hot(b, 3).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = monai.compute_hausdorff_distance(yp, yt, percentile=95, spacing=2.0)
    assert torch.allclose(ours.compute_hausdorff_distance(yp, yt, percentile=95, spacing=2.0), want, equal_nan=True)


# -- DeepMind surface-distance -----------------------------------------------------------------
def test_surfel_area_tables_match_the_library():
    lookup = pytest.importorskip("surface_distance.lookup_tables")
    from spatialseg_fast.ops._surfels import surfel_areas

    for sp in [(1, 1, 1), (1.3, 0.7, 2.1), (0.5, 3.0, 1.2)]:
        assert np.allclose(surfel_areas(sp), lookup.create_table_neighbour_code_to_surface_area(sp), rtol=1e-14, atol=0)
    for sp in [(1, 1), (1.3, 0.7)]:
        assert np.allclose(surfel_areas(sp), lookup.create_table_neighbour_code_to_contour_length(sp), rtol=1e-14, atol=0)


def same_pairs(got_d, got_a, want_d, want_a):
    """The same (distance, area) pairs: order among equal distances may differ by one ulp."""
    assert len(got_d) == len(want_d)
    g = np.lexsort((got_a, np.round(got_d, 9)))
    w = np.lexsort((want_a, np.round(want_d, 9)))
    return np.allclose(got_d[g], want_d[w], rtol=1e-12, atol=1e-12) and np.allclose(got_a[g], want_a[w], rtol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_surface_distance_same_numbers(seed):
    sd = pytest.importorskip("surface_distance")
    from spatialseg_fast.metrics import surface_distance as ours

    a, b = label_pair(seed, classes=4)
    slice_2d = int(np.argmax([(a[i] == 1).any() and (b[i] == 2).any() for i in range(len(a))]))
    for gt, pred, sp in [(a == 1, b == 1, (1.2, 0.7, 1.5)), (a == 2, b == 1, (1.0, 1.0, 1.0)),
                         (a[slice_2d] == 1, b[slice_2d] == 2, (0.8, 1.4))]:
        assert gt.any() and pred.any()  # (the library crashes on empty masks under NumPy 2)
        want, got = sd.compute_surface_distances(gt, pred, sp), ours.compute_surface_distances(gt, pred, sp)
        assert set(got) == set(want)
        assert same_pairs(got["distances_gt_to_pred"], got["surfel_areas_gt"], want["distances_gt_to_pred"], want["surfel_areas_gt"])
        assert same_pairs(got["distances_pred_to_gt"], got["surfel_areas_pred"], want["distances_pred_to_gt"], want["surfel_areas_pred"])
        assert np.all(np.diff(got["distances_gt_to_pred"]) >= 0)
        assert np.allclose(ours.compute_average_surface_distance(got), sd.compute_average_surface_distance(want), rtol=1e-12)
        for percent in (50, 95, 100):
            assert ours.compute_robust_hausdorff(got, percent) == pytest.approx(sd.compute_robust_hausdorff(want, percent), rel=1e-12)
        for tol in (0.5, 1.1, 2.5):
            assert ours.compute_surface_dice_at_tolerance(got, tol) == pytest.approx(sd.compute_surface_dice_at_tolerance(want, tol), rel=1e-12)
            assert np.allclose(ours.compute_surface_overlap_at_tolerance(got, tol), sd.compute_surface_overlap_at_tolerance(want, tol), rtol=1e-12)
        assert ours.compute_dice_coefficient(gt, pred) == sd.compute_dice_coefficient(gt, pred)


def test_surface_distance_empty_and_bad_inputs():
    sd = pytest.importorskip("surface_distance")
    from spatialseg_fast.metrics import surface_distance as ours

    full, empty = np.zeros((6, 6, 6), bool), np.zeros((6, 6, 6), bool)
    full[1:4, 1:4, 1:4] = True
    # both empty: the library returns four empty arrays; so do we
    want, got = sd.compute_surface_distances(empty, empty, (1, 1, 1)), ours.compute_surface_distances(empty, empty, (1, 1, 1))
    assert all(len(got[k]) == 0 and len(want[k]) == 0 for k in want)
    # one empty: the library's documented answer (it crashes on np.Inf under NumPy 2)
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        with pytest.raises(AttributeError):
            sd.compute_surface_distances(full, empty, (1, 1, 1))
    got = ours.compute_surface_distances(full, empty, (1, 1, 1))
    assert len(got["distances_pred_to_gt"]) == 0 and np.all(np.isinf(got["distances_gt_to_pred"]))
    assert len(got["surfel_areas_gt"]) == len(got["distances_gt_to_pred"]) > 0
    assert ours.compute_robust_hausdorff(got, 95) == np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 warnings leak to the user
        mean_gt, mean_pred = ours.compute_average_surface_distance(got)
        assert mean_gt == np.inf and np.isnan(mean_pred)
        assert ours.compute_surface_dice_at_tolerance(got, 1.0) == 0.0
    assert np.isnan(ours.compute_dice_coefficient(empty, empty))
    for bad in (full.astype(np.uint8), full.tolist()):
        with pytest.raises(ValueError) as want_err:
            sd.compute_surface_distances(bad, full, (1, 1, 1))
        with pytest.raises(ValueError) as got_err:
            ours.compute_surface_distances(bad, full, (1, 1, 1))
        assert str(got_err.value) == str(want_err.value)
    with pytest.raises(ValueError, match="compatible shape"):
        ours.compute_surface_distances(full, full, (1, 1))
