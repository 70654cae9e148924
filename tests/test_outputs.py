"""Outputs where users expect them: -o FILE for one input, OUT created before the checks that need
it, label tables for viewers, the hole-filled default brain mask, plain progress lines in logs,
and `evaluate --quiet` still printing its summary."""
import io
import re

import numpy as np
import pytest

from spatialseg_fast._progress import Progress
from spatialseg_fast.brainmask import default_brain_mask
from spatialseg_fast.cli import main
from spatialseg_fast.labeltable import freesurfer_lut, itksnap_labels, label_colour
from spatialseg_fast.model import load_model
from spatialseg_fast.pipeline import segment_volume
from spatialseg_fast.volume import Volume, load_label_map

from test_pipeline import SHAPE, VALUES, grid_affine, phantom, toy_model_path, write  # noqa: F401

nib = pytest.importorskip("nibabel")


def test_one_input_and_a_nifti_name_write_exactly_that_file(tmp_path, toy_model_path):  # noqa: F811
    image, _ = phantom()
    src = write(tmp_path / "t1.nii.gz", image, grid_affine())
    target = tmp_path / "new" / "seg.nii.gz"
    code = main(["segment", str(src), "-o", str(target), "--model", str(toy_model_path), "--no-register", "--quiet",
                 "--probabilities", "2", "--qc", str(tmp_path / "new" / "pics" / "x.png")])
    assert code == 0 and target.is_file() and not target.is_dir()
    assert load_label_map(target).shape == SHAPE
    assert (tmp_path / "new" / "seg_prob-2.nii.gz").is_file() and (tmp_path / "new" / "pics" / "x.png").is_file()
    assert (tmp_path / "new" / "spatialseg_labels_FreeSurferColorLUT.txt").is_file()
    # plain .nii too
    assert main(["segment", str(src), "-o", str(tmp_path / "b.nii"), "--model", str(toy_model_path), "--no-register",
                 "--quiet"]) == 0
    assert (tmp_path / "b.nii").is_file()


def test_a_nifti_name_for_several_inputs_is_refused(tmp_path, toy_model_path, capsys):  # noqa: F811
    image, _ = phantom()
    a = write(tmp_path / "a.nii.gz", image, grid_affine())
    b = write(tmp_path / "b.nii.gz", image, grid_affine())
    assert main(["segment", str(a), str(b), "-o", str(tmp_path / "seg.nii.gz"), "--model", str(toy_model_path)]) == 2
    assert "single input" in capsys.readouterr().err and not (tmp_path / "seg.nii.gz").exists()


def test_qc_and_volumes_inside_a_new_output_folder(tmp_path, toy_model_path):  # noqa: F811
    image, _ = phantom()
    src = write(tmp_path / "s.nii.gz", image, grid_affine())
    out = tmp_path / "OUT"
    assert main(["segment", str(src), "-o", str(out), "--model", str(toy_model_path), "--no-register", "--quiet",
                 "--qc", str(out / "x.png"), "--volumes", str(out / "v.csv")]) == 0
    assert (out / "x.png").is_file() and (out / "v.csv").is_file() and (out / "s_labels.nii.gz").is_file()


def test_label_tables_parse_and_colours_are_stable_and_distinct(tmp_path, toy_model_path, capsys):  # noqa: F811
    table = {0: "background", 4: "3rd Ventricle", 11: "4th Ventricle", 200: 'odd "name"'}
    lut = [line.split() for line in freesurfer_lut(table).splitlines() if line and not line.startswith("#")]
    assert [int(r[0]) for r in lut] == [0, 4, 11, 200] and lut[1][1] == "3rd_Ventricle"
    assert all(len(r) == 6 for r in lut) and tuple(int(x) for x in lut[2][2:5]) == label_colour(11)
    snap = [line for line in itksnap_labels(table).splitlines() if not line.startswith("#")]
    assert re.match(r'\s*4\s+\d+\s+\d+\s+\d+\s+1\s+1\s+1\s+"3rd Ventricle"$', snap[1])
    assert label_colour(0) == (0, 0, 0) and label_colour(17) == label_colour(17)
    colours = {label_colour(v) for v in range(1, 256)}
    assert len(colours) == 255
    # the command lists a model's codes
    assert main(["labels", "--model", str(toy_model_path)]) == 0
    out = capsys.readouterr().out.split("\n")
    assert [int(line.split()[0]) for line in out if line.strip()] == list(VALUES)
    assert main(["labels", "--model", str(toy_model_path), "--format", "lut"]) == 0
    assert "core" in capsys.readouterr().out


def test_enclosed_zero_holes_are_in_the_default_mask(toy_model_path):  # noqa: F811
    image, labels = phantom()
    holed = image.copy()
    holed[13:17, 15:19, 12:16] = 0  # a zero-valued cavity well inside the brain (like FSL's ventricles)
    mask = default_brain_mask(holed)
    assert mask[13:17, 15:19, 12:16].all() and not mask[0, 0, 0] and mask.sum() == (image != 0).sum()
    notch = image.copy()
    notch[:, :3] = 0  # zeros that reach the border stay outside
    assert not default_brain_mask(notch)[:, :3].any()
    model = load_model(toy_model_path)
    result = segment_volume(Volume(holed, grid_affine()), model, register=False)
    assert (np.asarray(result.labels.data)[13:17, 15:19, 12:16] > 0).all()


def test_progress_writes_plain_lines_when_not_a_terminal(monkeypatch):
    import spatialseg_fast._progress as prog

    monkeypatch.setattr(prog, "LOG_EVERY_S", 0.0)
    stream = io.StringIO()
    bar = Progress(3, "work", "steps", stream=stream)
    for _ in range(3):
        bar.update()
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text and text.count("\n") == 4 and "3/3 steps" in text.splitlines()[-1]


def test_evaluate_quiet_still_prints_the_summary(tmp_path, capsys):
    _, labels = phantom()
    a = write(tmp_path / "a.nii.gz", labels, grid_affine())
    assert main(["evaluate", str(a), str(a), "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "dice" in out[0]


def test_spatialseg_model_names_the_default_model(monkeypatch, tmp_path, toy_model_path):  # noqa: F811
    from spatialseg_fast.model.io import ModelNotFoundError, default_model_path

    monkeypatch.setenv("SPATIALSEG_MODEL", str(toy_model_path))
    assert default_model_path() == toy_model_path
    monkeypatch.setenv("SPATIALSEG_MODEL", str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelNotFoundError, match="SPATIALSEG_MODEL"):
        default_model_path()


def test_cohort_mode_refuses_a_file_output_and_writes_the_label_tables(tmp_path, toy_model_path, capsys):  # noqa: F811
    image, _ = phantom()
    src = write(tmp_path / "s.nii.gz", image, grid_affine())
    assert main(["segment", str(src), "-o", str(tmp_path / "x.nii.gz"), "--model", str(toy_model_path),
                 "--workers", "1"]) == 2
    assert "give a folder name" in capsys.readouterr().err and not (tmp_path / "x.nii.gz").exists()
    out = tmp_path / "cohort"
    assert main(["segment", str(src), "-o", str(out), "--model", str(toy_model_path), "--no-register", "--quiet",
                 "--workers", "1", "--results", str(out / "sub" / "r.csv")]) == 0
    assert (out / "spatialseg_labels_FreeSurferColorLUT.txt").is_file() and (out / "sub" / "r.csv").is_file()


def test_info_survives_a_bad_model_setting_and_skull_strip_is_checked(tmp_path, monkeypatch, capsys, toy_model_path):  # noqa: F811
    monkeypatch.setenv("SPATIALSEG_MODEL", str(tmp_path / "missing.safetensors"))
    assert main(["info"]) == 0
    assert "missing.safetensors" in capsys.readouterr().out
    image, _ = phantom()
    with pytest.raises(ValueError, match="skull_strip"):
        segment_volume(Volume(image, grid_affine()), load_model(toy_model_path), register=False,
                       mask=Volume(image != 0, grid_affine()), skull_strip="yse")
