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
