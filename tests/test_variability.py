"""The wide training distribution and the subject stream: deformation sizes, determinism,
alignment of image and labels, per-label synthesis, and the pool's schedule."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from spatialseg_fast.datasets.templates import Subject
from spatialseg_fast.datasets.variability import (HELDOUT, Variability, displacement_stats, label_means,
                                                  make_wide_subject, synthesize)
from spatialseg_fast.training.stream import SubjectPool, slot_indices

PLAIN = replace(HELDOUT, warp_mm=(3.0, 4.5), warp_min_max_mm=0.0)  # deformation only


def blob(shape=(48, 52, 44)):
    """An ellipsoid brain cut into 4 slabs along axis 1; intensity 10 * label + 5 inside."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    c = (np.array(shape) - 1) / 2
    inside = ((((idx - c) / (np.array(shape) * 0.42)) ** 2).sum(-1)) < 1
    labels = np.where(inside, 1 + (idx[..., 1] * 4 // shape[1]).astype(np.uint8), 0).astype(np.uint8)
    image = np.where(inside, 10.0 * labels + 5.0, 0.0).astype(np.float32)
    return Subject(image=image, labels=labels, affine=np.eye(4), name="blob")


def test_a_subject_depends_only_on_seed_and_index():
    base = blob()
    a, b = make_wide_subject(base, 7, 3), make_wide_subject(base, 7, 3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    c = make_wide_subject(base, 7, 4)
    assert not np.array_equal(a.labels, c.labels)


def test_mean_displacement_is_drawn_in_range_without_folding():
    base = blob()
    mask = torch.from_numpy(base.mask)
    means = []
    for i in range(4):
        _, disp = make_wide_subject(base, 1, i, PLAIN, return_field=True)
        stats = displacement_stats(disp, (1.0, 1.0, 1.0), mask)
        assert 3.0 - 1e-3 <= stats["mean_mm"] <= 4.5 + 1e-3
        assert stats["max_mm"] > 1.5 * stats["mean_mm"]  # a field, not a shift
        assert stats["min_jacobian"] > 0
        means.append(stats["mean_mm"])
    assert np.ptp(means) > 0.05  # the size itself is drawn per subject


def test_the_heldout_warp_reaches_its_largest_displacement():
    base = blob()
    mask = torch.from_numpy(base.mask)
    for i in range(2):
        _, disp = make_wide_subject(base, 4, i, HELDOUT, return_field=True)
        stats = displacement_stats(disp, (1.0, 1.0, 1.0), mask)
        assert stats["max_mm"] >= 12.0 - 1e-3 and stats["mean_mm"] >= 3.0 - 1e-3


def test_displacement_stats_of_a_known_field():
    mask = torch.ones(6, 6, 6, dtype=torch.bool)
    shift = torch.zeros(3, 6, 6, 6)
    shift[0] = 2.0  # 2 voxels along axis 0 at 1.5 mm: 3 mm everywhere, Jacobian 1
    s = displacement_stats(shift, (1.5, 1.0, 1.0), mask)
    assert s["mean_mm"] == pytest.approx(3.0) and s["max_mm"] == pytest.approx(3.0)
    assert s["min_jacobian"] == pytest.approx(1.0)


def test_image_and_labels_move_together_and_stay_in_the_brain():
    base = blob()
    s = make_wide_subject(base, 0, 2, PLAIN)
    inside = s.labels > 0
    from scipy import ndimage

    core = ndimage.binary_erosion(inside, iterations=2)
    implied = np.round((s.image - 5.0) / 10.0)
    assert (implied[core] == s.labels[core]).mean() > 0.9
    assert not (s.labels[s.image == 0] > 0).any()
    assert (s.image >= 0).all() and (s.image[inside] > 0).all()
    # the anatomy moved: the warped labels differ from the template's on a real share of voxels
    assert (s.labels != base.labels).mean() > 0.01


def test_synthetic_images_are_drawn_per_label():
    base = blob()
    v = replace(Variability(), within=(0.0, 0.0))
    lab = torch.from_numpy(base.labels)
    mask = lab > 0
    img = synthesize(np.random.default_rng(0), lab, mask, label_means(base), v).numpy()
    from scipy import ndimage

    per_label = {k: img[ndimage.binary_erosion(base.labels == k, iterations=4)] for k in range(1, 5)}
    ratios = []
    for k, x in per_label.items():
        assert x.std() < 0.02 * x.mean()  # one mean per structure (no spread asked)
        ratios.append(x.mean() / (10.0 * k + 5.0))
    assert np.ptp(ratios) > 0.02  # each structure's contrast jittered on its own
    box = np.ones((3, 3, 3), bool)  # the separable blur spreads within a cube
    assert (img[~ndimage.binary_dilation(mask.numpy(), box, iterations=4)] == 0).all()
    full = make_wide_subject(base, 3, 0, replace(Variability(), synth_prob=1.0))
    assert "synth" in full.name and (full.image[full.labels > 0] > 0).all()


def test_pool_slots_follow_the_stream():
    size, refresh = 5, 2
    seen = set()
    previous = slot_indices(0, size, refresh)
    assert previous == list(range(size))
    for e in range(1, 8):
        now = slot_indices(e, size, refresh)
        changed = [j for j in range(size) if now[j] != previous[j]]
        assert len(changed) == refresh and all(now[j] % size == j for j in range(size))
        seen.update(now)
        previous = now
    assert seen | set(range(size)) == set(range(size + refresh * 7))


def test_pool_replaces_only_the_fresh_slots():
    from test_training import VALUES, toy_model

    base = blob((30, 32, 28))
    base = Subject(image=base.image, labels=np.where(base.labels > 0, np.asarray(VALUES)[np.minimum(base.labels, 3)], 0).astype(np.uint8),
                   affine=base.affine, name="blob")
    pool = SubjectPool(toy_model(), base, seed=0, size=3, refresh=1, variability=PLAIN)
    first = pool(0)
    second = pool(1)
    assert sum(a is b for a, b in zip(first, second)) == 2
    assert pool(1)[0] is second[0]  # asking again makes nothing new
    assert pool.subjects_seen(3) == 5
    with pytest.raises(ValueError, match="refresh"):
        SubjectPool(toy_model(), base, 0, size=2, refresh=3)
