"""spatialseg evaluate on NIfTI and .npy files and folders."""
import csv
import json

import numpy as np
import pytest

from spatialseg_fast.cli import main

nib = pytest.importorskip("nibabel")


def write(path, data, affine=None):
    if str(path).endswith(".npy"):
        np.save(path, data)
    else:
        nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.0, 1.0, 1.0]) if affine is None else affine), str(path))


def cubes():
    ref, pred = np.zeros((14, 6, 6), np.int16), np.zeros((14, 6, 6), np.int16)
    ref[2:5, 2:5, 2:5] = 1
    pred[7:10, 2:5, 2:5] = 1
    return pred, ref


def test_single_pair_prints_the_table(tmp_path, capsys):
    pred, ref = cubes()
    write(tmp_path / "p.nii.gz", pred)
    write(tmp_path / "r.nii.gz", ref)
    assert main(["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "r.nii.gz"), "--json", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out
    assert "hausdorff" in out and "7.5" in out  # spacing 1.5 mm from the affine
    rows = json.loads((tmp_path / "o.json").read_text())
    assert rows[0]["subject"] == "p" and rows[0]["label"] == 1 and rows[0]["msd"] == pytest.approx(6.0)


def test_folders_matched_by_name(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    pred, ref = cubes()
    write(tmp_path / "p" / "a.npy", pred)
    write(tmp_path / "r" / "a.npy", ref)
    write(tmp_path / "p" / "b.nii", ref)
    write(tmp_path / "r" / "b.nii", ref)
    write(tmp_path / "p" / "only.nii", ref)
    code = main(["evaluate", str(tmp_path / "p"), str(tmp_path / "r"), "--csv", str(tmp_path / "o.csv"), "--spacing", "1.5", "1", "1"])
    assert code == 0
    captured = capsys.readouterr()
    assert "only.nii is in only one folder" in captured.err and "all 2 subjects" in captured.out
    rows = list(csv.DictReader(open(tmp_path / "o.csv")))
    assert [(r["subject"], r["label"]) for r in rows] == [("a", "1"), ("b", "1")]
    assert float(rows[0]["hausdorff"]) == pytest.approx(7.5) and float(rows[1]["dice"]) == 1.0


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    pred, ref = cubes()
    write(tmp_path / "p.nii.gz", pred)
    write(tmp_path / "r.nii.gz", ref, affine=np.eye(4))
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    assert main(["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "r.nii.gz")]) == 1
    assert "different grids" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "junk.nii.gz")]) == 1
    assert "cannot be read" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "nothere.nii.gz")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), str(tmp_path / "p.nii.gz")]) == 2
    assert "both be files or both be folders" in capsys.readouterr().err


def test_label_names_from_a_model(tmp_path, capsys):
    from spatialseg_fast import build_model
    from spatialseg_fast.model import save_model

    model = build_model("basenet", 3, seed=0)
    model = build_model(config=model.config.replace(label_values=(0, 1, 7), label_names=("background", "left cube", "other")))
    save_model(model, tmp_path / "m.safetensors")
    pred, ref = cubes()
    write(tmp_path / "p.nii.gz", pred)
    write(tmp_path / "r.nii.gz", ref)
    args = ["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "r.nii.gz")]
    assert main(args + ["--model", str(tmp_path / "m.safetensors"), "--csv", str(tmp_path / "o.csv")]) == 0
    assert "left cube" in capsys.readouterr().out
    assert list(csv.DictReader(open(tmp_path / "o.csv")))[0]["name"] == "left cube"
    (tmp_path / "bad.safetensors").write_bytes(b"not a model")
    assert main(args + ["--model", str(tmp_path / "bad.safetensors")]) == 2
    assert "not a readable spatialseg_fast model" in capsys.readouterr().err


def test_folders_match_by_subject_name_across_extensions_and_the_labels_suffix(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    pred, ref = cubes()
    write(tmp_path / "p" / "s1.nii", ref)            # .nii against .nii.gz
    write(tmp_path / "r" / "s1.nii.gz", ref)
    write(tmp_path / "p" / "s2_labels.nii.gz", pred)  # as `spatialseg segment` names its output
    write(tmp_path / "r" / "s2.nii.gz", ref)
    assert main(["evaluate", str(tmp_path / "p"), str(tmp_path / "r"), "--csv", str(tmp_path / "o.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "o.csv")))
    assert [(r["subject"], float(r["dice"])) for r in rows] == [("s1", 1.0), ("s2", 0.0)]
    write(tmp_path / "p" / "s2.nii.gz", ref)  # s2 and s2_labels both match the reference s2: refused, not guessed
    assert main(["evaluate", str(tmp_path / "p"), str(tmp_path / "r")]) == 2
    assert "s2.nii.gz and s2_labels.nii.gz both match" in capsys.readouterr().err
    (tmp_path / "p" / "s2.nii.gz").unlink()
    write(tmp_path / "p" / "s1.nii.gz", ref)  # two files for one subject: refused, not guessed
    assert main(["evaluate", str(tmp_path / "p"), str(tmp_path / "r")]) == 2
    assert "name the same subject" in capsys.readouterr().err


def test_a_2d_nifti_takes_its_voxel_size_from_the_affine(tmp_path, capsys):
    ref = np.zeros((12, 12), np.int16)
    ref[3:7, 3:7] = 1
    write(tmp_path / "r.nii.gz", ref, affine=np.diag([0.5, 0.5, 1.0, 1.0]))
    write(tmp_path / "p.nii.gz", np.roll(ref, 1, axis=0), affine=np.diag([0.5, 0.5, 1.0, 1.0]))
    assert main(["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "r.nii.gz"), "--json", str(tmp_path / "o.json")]) == 0
    assert json.loads((tmp_path / "o.json").read_text())[0]["hausdorff"] == pytest.approx(0.5)  # one voxel of 0.5 mm


def test_spacing_keeps_the_grid_check(tmp_path, capsys):
    pred, ref = cubes()
    write(tmp_path / "r.nii.gz", ref)
    write(tmp_path / "other_affine.nii.gz", pred, affine=np.eye(4))
    write(tmp_path / "other_shape.nii.gz", pred[:-1])
    assert main(["evaluate", str(tmp_path / "other_shape.nii.gz"), str(tmp_path / "r.nii.gz"), "--spacing", "1"]) == 1
    assert "shapes differ" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "other_affine.nii.gz"), str(tmp_path / "r.nii.gz")]) == 1
    assert "or give --spacing to compare them voxel by voxel" in capsys.readouterr().err
    for bad in (["nan"], ["0"], ["1", "1", "1", "1"]):
        assert main(["evaluate", str(tmp_path / "other_affine.nii.gz"), str(tmp_path / "r.nii.gz"), "--spacing", *bad]) == 2
        assert "--spacing takes" in capsys.readouterr().err
    # same shape, other affine: the user's --spacing is taken, with a warning that names the difference
    assert main(["evaluate", str(tmp_path / "other_affine.nii.gz"), str(tmp_path / "r.nii.gz"), "--spacing", "2", "--json",
                 str(tmp_path / "o.json")]) == 0
    assert "voxel sizes differ" in capsys.readouterr().err
    assert json.loads((tmp_path / "o.json").read_text())[0]["hausdorff"] == pytest.approx(10.0)  # 5 voxels of 2 mm


def test_a_missed_structure_is_counted_not_hidden(tmp_path, capsys):
    pred, ref = cubes()
    ref[10:12, 2:4, 2:4] = 2  # label 2 only in the reference: infinite distances
    write(tmp_path / "p.nii.gz", pred)
    write(tmp_path / "r.nii.gz", ref)
    assert main(["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "r.nii.gz"), "--quiet", "--json", str(tmp_path / "o.json")]) == 0
    assert "hausdorff 7.5 +- 0 (1 of 2 labels inf, left out)" in capsys.readouterr().out

    def strict(constant):  # what JSON.parse and other strict parsers do with Infinity/NaN
        raise ValueError(constant)

    rows = json.loads((tmp_path / "o.json").read_text(), parse_constant=strict)
    assert rows[1]["label"] == 2 and rows[1]["hausdorff"] == "inf" and float(rows[1]["hausdorff"]) == np.inf
    # across subjects: the same rule over label rows, and '-' where nothing is finite
    for folder in ("p", "r"):
        (tmp_path / folder).mkdir()
    for name in ("s1", "s2"):
        write(tmp_path / "p" / f"{name}.nii.gz", pred)
        write(tmp_path / "r" / f"{name}.nii.gz", ref)
    assert main(["evaluate", str(tmp_path / "p"), str(tmp_path / "r"), "--quiet", "--metrics", "dice", "hausdorff"]) == 0
    assert "all 2 subjects, 4 label rows:  dice 0 +- 0  hausdorff 7.5 +- 0 (2 of 4 label rows inf, left out)" in capsys.readouterr().out
    only_missed = ref.copy()
    only_missed[only_missed == 1] = 0
    write(tmp_path / "r" / "s1.nii.gz", only_missed)
    write(tmp_path / "p" / "s1.nii.gz", np.zeros_like(pred))
    assert main(["evaluate", str(tmp_path / "p" / "s1.nii.gz"), str(tmp_path / "r" / "s1.nii.gz"), "--quiet",
                 "--metrics", "hausdorff"]) == 0
    assert "hausdorff - (1 of 1 labels inf, left out)" in capsys.readouterr().out


def test_output_files_and_a_stale_model_variable_are_handled_before_scoring(tmp_path, capsys, monkeypatch):
    pred, ref = cubes()
    write(tmp_path / "p.nii.gz", pred)
    write(tmp_path / "r.nii.gz", ref)
    assert main(["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "r.nii.gz"), "--csv", str(tmp_path / "no" / "o.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("SPATIALSEG_MODEL", str(tmp_path / "gone.safetensors"))  # names only decorate the table
    assert main(["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "r.nii.gz"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "labels left unnamed" in captured.err and "dice 0" in captured.out


def test_2d_maps_ignore_the_third_axis_of_their_affines(tmp_path, capsys):
    ref = np.zeros((12, 12), np.int16)
    ref[3:7, 3:7] = 1
    write(tmp_path / "r.nii.gz", ref, affine=np.diag([0.5, 0.5, 3.0, 1.0]))  # slice thickness: no extent in 2D
    write(tmp_path / "p.nii.gz", ref, affine=np.diag([0.5, 0.5, 1.0, 1.0]))
    assert main(["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "r.nii.gz"), "--quiet"]) == 0
    write(tmp_path / "p.nii.gz", ref, affine=np.diag([0.5, 0.6, 1.0, 1.0]))
    assert main(["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "r.nii.gz"), "--quiet"]) == 1
    assert "voxel sizes differ (0.5, 0.6 / 0.5, 0.5 mm)" in capsys.readouterr().err
