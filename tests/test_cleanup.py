import numpy as np
import torch
import pytest

from spatialseg_fast.cleanup import remove_islands


def _two_structures():
    lab = np.zeros((20, 24, 22), dtype=np.uint8)
    lab[2:18, 2:12, 2:20] = 3  # structure 3: the left block
    lab[2:18, 12:22, 2:20] = 5  # structure 5: the right block
    return lab


def test_stray_island_takes_the_surrounding_label():
    lab = _two_structures()
    lab[8:10, 16:18, 8:10] = 3  # 8 voxels of 3 deep inside 5
    out = remove_islands(lab)
    assert (out[8:10, 16:18, 8:10] == 5).all()
    expected = _two_structures()
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == lab.dtype
    assert (lab[8:10, 16:18, 8:10] == 3).all()  # the input is not changed


def test_island_outside_the_structures_goes_to_background():
    lab = _two_structures()
    lab[0, 0, 0] = 5
    out = remove_islands(lab)
    assert out[0, 0, 0] == 0
    np.testing.assert_array_equal(out, _two_structures())


def test_keep_fraction_bounds():
    lab = _two_structures()
    lab[8:10, 16:18, 8:10] = 3
    np.testing.assert_array_equal(remove_islands(lab, keep_fraction=0), lab)
    # the island is 8 voxels, the block 16*10*18: kept only below 8 / 2880 of the largest
    assert (remove_islands(lab, keep_fraction=0.002)[8:10, 16:18, 8:10] == 3).all()
    assert (remove_islands(lab, keep_fraction=0.003)[8:10, 16:18, 8:10] == 5).all()


def test_equal_pieces_are_both_kept():
    lab = np.zeros((10, 30, 10), dtype=np.int32)
    lab[2:8, 2:8, 2:8] = 7
    lab[2:8, 20:26, 2:8] = 7
    np.testing.assert_array_equal(remove_islands(lab, keep_fraction=1.0), lab)


def test_diagonal_neighbours_are_one_piece():
    lab = np.zeros((12, 12, 12), dtype=np.int16)
    lab[2:6, 2:6, 2:6] = 4
    lab[6, 6, 6] = 4  # touches the block's corner only: 26-connected to it
    np.testing.assert_array_equal(remove_islands(lab, keep_fraction=1.0), lab)


def test_background_pieces_are_left_alone():
    lab = _two_structures()
    lab[8:10, 6:8, 8:10] = 0  # a hole in 3
    np.testing.assert_array_equal(remove_islands(lab, keep_fraction=1.0), lab)


def test_nearest_kept_voxel_uses_the_spacing():
    # a stray voxel of 9 on the border between 3 (the next voxel along axis 0) and 5 (all around
    # it otherwise): which is nearer depends on the voxel size along axis 0
    lab = np.full((9, 9, 9), 5, dtype=np.uint8)
    lab[:4] = 3
    lab[0:2, 0:2, 0:2] = 9  # 9's largest piece, kept
    lab[4, 4, 4] = 9
    near3 = remove_islands(lab, keep_fraction=1.0, spacing=(0.5, 1.0, 2.0))
    near5 = remove_islands(lab, keep_fraction=1.0, spacing=(2.0, 1.0, 0.5))
    assert near3[4, 4, 4] == 3 and near5[4, 4, 4] == 5
    assert (near3[0:2, 0:2, 0:2] == 9).all()


def test_large_and_negative_label_values():
    lab = np.zeros((10, 10, 10), dtype=np.int32)
    lab[1:5] = 40000
    lab[5:9] = -2
    lab[7, 7, 7] = 40000
    out = remove_islands(lab)
    assert out[7, 7, 7] == -2
    assert set(np.unique(out)) == {0, 40000, -2}


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 4)), "3D"),
    (np.zeros((4, 4, 4), dtype=np.float32), "integer"),
    (np.zeros((0, 4, 4), dtype=np.uint8), "non-empty"),
])
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        remove_islands(bad)


def test_bad_fraction():
    with pytest.raises(ValueError, match="keep_fraction"):
        remove_islands(np.zeros((3, 3, 3), dtype=np.uint8), keep_fraction=1.5)


def _atlas_of(label_maps, values):
    from spatialseg_fast.datasets.atlas import build_atlas

    return build_atlas(label_maps, values)


def test_structures_where_the_atlas_never_saw_them_take_the_nearest_allowed_label():
    from spatialseg_fast.cleanup import outside_atlas, remove_outside_atlas

    values = (0, 3, 5, 9)
    truth = _two_structures()
    atlas = _atlas_of([truth], values)
    pred = truth.copy()
    pred[4:6, 16:18, 8:10] = 3  # 3 inside 5's territory: the atlas gives 3 probability 0 there
    pred[12, 5, 5] = 9  # a label the atlas has nowhere
    bad = outside_atlas(pred, atlas, values)
    assert bad.sum() == 8 + 1 and bad[4:6, 16:18, 8:10].all() and bad[12, 5, 5]
    out = remove_outside_atlas(pred, atlas, values)
    np.testing.assert_array_equal(out, truth)
    # a dense [L, D, H, W] atlas gives the same answer
    dense = atlas.to_dense(torch.float32)
    np.testing.assert_array_equal(outside_atlas(pred, dense, values), bad)
    # background is always allowed, and a label the atlas allows stays where it is
    pred2 = truth.copy()
    pred2[8, 8, 8] = 0
    np.testing.assert_array_equal(remove_outside_atlas(pred2, atlas, values), pred2)


@pytest.mark.parametrize("dense", [False, True])
def test_min_prob_sets_where_a_structure_counts_as_outside_the_atlas(dense):
    """Four maps where 3 reaches 4 voxels deeper into 5's territory in one of them: the atlas gives
    3 probability 1/4 in that band. A prediction of 3 there stays at min_prob 0 and 0.2 and takes
    5 (the nearest allowed label) at 0.25 and above: "outside" means probability <= min_prob."""
    from spatialseg_fast.cleanup import DEFAULT_ATLAS_MIN_PROB, outside_atlas, remove_outside_atlas

    values = (0, 3, 5)
    truth = _two_structures()
    wide = truth.copy()
    wide[2:18, 12:16, 2:20] = 3
    atlas = _atlas_of([truth, truth, truth, wide], values)
    if dense:
        atlas = atlas.to_dense(torch.float32)
    pred = truth.copy()
    pred[6:10, 12:16, 6:10] = 3  # 64 voxels in the band
    for p in (0.0, 0.2):
        assert not outside_atlas(pred, atlas, values, min_prob=p).any()
        np.testing.assert_array_equal(remove_outside_atlas(pred, atlas, values, min_prob=p), pred)
    for p in (0.25, 0.6):
        assert outside_atlas(pred, atlas, values, min_prob=p).sum() == 64
        np.testing.assert_array_equal(remove_outside_atlas(pred, atlas, values, min_prob=p), truth)
    assert DEFAULT_ATLAS_MIN_PROB == 0  # the documented default: only where the atlas never has it
    assert not outside_atlas(pred, atlas, values).any()
    np.testing.assert_array_equal(remove_outside_atlas(pred, atlas, values), pred)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="min_prob"):
            remove_outside_atlas(pred, atlas, values, min_prob=bad)
        with pytest.raises(ValueError, match="min_prob"):
            outside_atlas(pred, atlas, values, min_prob=bad)


@pytest.mark.parametrize("dense", [None, torch.float32, torch.float16, torch.float64])
def test_a_threshold_on_an_atlas_value_counts_it_as_outside_for_every_atlas_form(dense):
    """3 of 10 maps put 3 in the band: probability 0.3, which float16 keeps as 0.30005. At
    min_prob 0.3 the band is outside for the sparse atlas and for dense ones of any dtype."""
    from spatialseg_fast.cleanup import outside_atlas

    values = (0, 3, 5)
    truth = _two_structures()
    wide = truth.copy()
    wide[2:18, 12:16, 2:20] = 3
    atlas = _atlas_of([truth] * 7 + [wide] * 3, values)
    if dense is not None:
        atlas = atlas.to_dense(dense)
    pred = truth.copy()
    pred[6:10, 12:16, 6:10] = 3
    assert outside_atlas(pred, atlas, values, min_prob=0.3).sum() == 64
    assert not outside_atlas(pred, atlas, values, min_prob=0.29).any()


def test_where_no_label_passes_the_threshold_the_atlas_top_label_is_taken():
    """Half the maps say 3, half say 5 in a band: at min_prob 0.6 neither passes, so the band's
    voxels end with the atlas's most probable label there (one of the two), not a hole."""
    from spatialseg_fast.cleanup import remove_outside_atlas

    values = (0, 3, 5)
    truth = _two_structures()
    wide = truth.copy()
    wide[2:18, 12:16, 2:20] = 3
    atlas = _atlas_of([truth, wide], values)
    pred = truth.copy()
    pred[6:10, 12:16, 6:10] = 3
    out = remove_outside_atlas(pred, atlas, values, min_prob=0.6)
    band = out[6:10, 12:16, 6:10]
    top = np.asarray(values)[atlas.index[0].numpy().astype(np.int64)][6:10, 12:16, 6:10]
    np.testing.assert_array_equal(band, top)
    assert set(np.unique(band)) <= {3, 5}


def test_atlas_on_another_grid_is_refused():
    from spatialseg_fast.cleanup import remove_outside_atlas

    atlas = _atlas_of([_two_structures()], (0, 3, 5))
    with pytest.raises(ValueError, match="grid"):
        remove_outside_atlas(np.zeros((5, 5, 5), dtype=np.uint8), atlas, (0, 3, 5))


@pytest.mark.parametrize("dense", [False, True])
def test_after_the_atlas_rule_every_voxel_has_a_label_the_atlas_allows(dense):
    """A wide spill of 5 into 3's territory: the nearest voxel keeping its label can be a 5 that the
    atlas does not allow at the spilled voxel, or background outside the structures; neither may
    be the answer there."""
    from spatialseg_fast.cleanup import outside_atlas, remove_outside_atlas

    values = (0, 3, 5)
    truth = _two_structures()
    atlas = _atlas_of([truth], values)
    if dense:
        atlas = atlas.to_dense(torch.bfloat16)  # any dtype the engine accepts
    pred = truth.copy()
    pred[2:18, 9:12, 2:20] = 5
    assert outside_atlas(pred, atlas, values).sum() == 16 * 3 * 18
    out = remove_outside_atlas(pred, atlas, values)
    assert not outside_atlas(out, atlas, values).any()
    np.testing.assert_array_equal(out, truth)  # here the only label allowed in the spill is 3
