"""evaluate(): the per-label table, its definitions on hand-computed cases, inputs and outputs."""
import math

import numpy as np
import pytest
import torch

from spatialseg_fast import Volume
from spatialseg_fast.metrics import evaluate


def two_cubes():
    ref, pred = np.zeros((14, 6, 6), np.uint8), np.zeros((14, 6, 6), np.uint8)
    ref[2:5, 2:5, 2:5] = 1
    pred[7:10, 2:5, 2:5] = 1
    ref[0, 0, 0] = 2  # only in ref
    return pred, ref


def test_hand_computed_table():
    pred, ref = two_cubes()
    table = evaluate(pred, ref, spacing=(1.5, 1, 1), labels=[1, 2, 3], metrics=("dice", "hausdorff", "hd95", "msd", "assd", "hd100", "hd0"))
    row = table.to_dict()[1]
    assert row["dice"] == 0 and row["hausdorff"] == pytest.approx(7.5)
    assert row["msd"] == pytest.approx(6.0) and row["assd"] == pytest.approx(6.0)
    assert row["hd100"] == pytest.approx(7.5) and row["hd0"] == pytest.approx(4.5)  # nearest layer: 3 voxels
    # 52 pooled distances: 18 x 7.5, 16 x 6, 18 x 4.5 -> the 95th percentile is 7.5
    assert row["hd95"] == pytest.approx(7.5)
    missing_one = table.to_dict()[2]
    assert missing_one["dice"] == 0 and math.isinf(missing_one["hausdorff"]) and math.isinf(missing_one["msd"])
    missing_both = table.to_dict()[3]
    assert all(math.isnan(v) for v in missing_both.values())


def test_csv_summary_and_names(tmp_path):
    pred, ref = two_cubes()
    table = evaluate(pred, ref, names={1: "cube", 2: "speck"})
    text = table.to_csv(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == text
    lines = text.strip().splitlines()
    assert lines[0] == "label,name,dice,hausdorff,hd95,msd,assd" and lines[1].startswith("1,cube,0,5,")
    mean, sd, n = table.summary()["dice"]
    assert (mean, n) == (0.0, 2)
    assert table.summary()["hausdorff"][2] == 1  # the infinite one is left out of the mean
    assert "cube" in str(table)


def test_volumes_spacing_from_affine_and_grid_check():
    pred, ref = two_cubes()
    affine = np.diag([1.5, 1.0, 1.0, 1.0])
    t = evaluate(Volume(pred, affine), Volume(ref, affine))
    assert t.to_dict()[1]["hausdorff"] == pytest.approx(7.5)
    with pytest.raises(ValueError, match="different grids"):
        evaluate(Volume(pred, affine), Volume(ref, np.eye(4)))
    with pytest.raises(ValueError, match="both"):
        evaluate(Volume(pred, affine), ref)
    with pytest.raises(ValueError, match="do not pass"):
        evaluate(Volume(pred, affine), Volume(ref, affine), spacing=(1, 1, 1))


def test_tensor_and_2d_inputs():
    pred, ref = two_cubes()
    a = evaluate(torch.from_numpy(pred), torch.from_numpy(ref)).values
    b = evaluate(pred, ref).values
    assert np.array_equal(a, b, equal_nan=True)
    t2 = evaluate(pred[:, :, 3], ref[:, :, 3], spacing=(2.0, 1.0), labels=[1])
    assert t2.to_dict()[1]["hausdorff"] == pytest.approx(10.0)


@pytest.mark.parametrize("kwargs, match", [(dict(metrics=("dice", "hd101")), "unknown metric"),
                                          (dict(metrics=("volume",)), "unknown metric"), (dict(metrics=()), "at least one")])
def test_bad_metrics(kwargs, match):
    pred, ref = two_cubes()
    with pytest.raises(ValueError, match=match):
        evaluate(pred, ref, **kwargs)


def test_grid_difference_names_what_differs():
    from spatialseg_fast.metrics import grid_difference

    eye = np.eye(4)
    assert grid_difference((4, 5, 6), eye, (4, 5, 6), eye + 1e-6) is None
    assert "shapes differ" in grid_difference((4, 5, 6), eye, (4, 5, 7), eye)
    assert "voxel sizes differ (2, 1, 1 / 1, 1, 1 mm)" in grid_difference((4, 5, 6), np.diag([2, 1, 1, 1.0]), (4, 5, 6), eye)
    flipped = np.diag([-1, 1, 1, 1.0])
    flipped[0, 3] = 3
    assert grid_difference((4, 5, 6), flipped, (4, 5, 6), eye).endswith("but their orientations differ")
    moved = eye.copy()
    moved[:3, 3] = (3, 4, 0)
    assert "origins differ by 5 mm" in grid_difference((4, 5, 6), moved, (4, 5, 6), eye)
