"""The NIfTI pipeline and `spatialseg segment`: orientation and grid round trips, registration,
outputs, and every bad input giving a one-line error with nothing half-written."""
import gzip

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from spatialseg_fast import build_model, save_model, segment
from spatialseg_fast.cleanup import DEFAULT_ATLAS_MIN_PROB, outside_atlas, remove_islands, remove_outside_atlas
from spatialseg_fast.cli import main
from spatialseg_fast.datasets.atlas import build_atlas
from spatialseg_fast.model import load_model
from spatialseg_fast.pipeline import segment_volume
from spatialseg_fast.registration import LOW_SIMILARITY, register, register_affine
from spatialseg_fast.training.recipe import template_volume
from spatialseg_fast.volume import Volume, load_volume, resample

nib = pytest.importorskip("nibabel")

SHAPE = (30, 34, 28)
VALUES = (0, 2, 5, 7)


def phantom(shape=SHAPE):
    """(image, labels): an ellipsoid brain with a core, a shell and an off-centre blob."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    c = (np.array(shape) - 1) / 2
    r = (((idx - c) / (np.array(shape) * 0.4)) ** 2).sum(-1)
    blob = ((idx - c - [5, 4, 0]) ** 2).sum(-1) < 16
    labels = np.select([blob & (r < 1), r < 0.4, r < 1], [7, 2, 5], 0)
    image = np.select([labels == 7, labels == 2, labels == 5], [2.2, 1.6, 1.0], 0.0) + 0.05 * np.sin(idx[..., 0])
    return (image * (labels > 0)).astype(np.float32), labels.astype(np.uint8)


def grid_affine():
    a = np.eye(4)
    a[:3, 3] = [-15, -17, -14]
    return a


def save_toy_model(path, labels, values, names=None):
    """A tiny untrained basenet+dist+prob model of the phantom: its atlas from `labels` (coded with
    `values`), the phantom as its registration template, its grid in the metadata."""
    image, _ = phantom()
    named = {"label_names": names} if names is not None else {}
    model = build_model("basenet+dist+prob", len(values), seed=0, label_values=values,
                        intensity_reference="brain_median", **named)
    model.atlas = build_atlas([labels], values)
    model.template = template_volume(image, grid_affine())
    save_model(model, path, metadata={"template": {"shape": list(SHAPE), "affine": grid_affine().tolist()}})
    return path


@pytest.fixture(scope="module")
def toy_model_path(tmp_path_factory):
    _, labels = phantom()
    return save_toy_model(tmp_path_factory.mktemp("model") / "toy.safetensors", labels, VALUES,
                          ("background", "core", "shell", "blob"))


def write(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


# -- geometry ---------------------------------------------------------------------------------
def test_las_subject_comes_back_on_its_own_grid(toy_model_path):
    model = load_model(toy_model_path)
    image, _ = phantom()
    ras = Volume(image, grid_affine())
    las_affine = grid_affine()
    las_affine[0, 0], las_affine[0, 3] = -1, -15 + SHAPE[0] - 1
    las = Volume(image[::-1].copy(), las_affine)
    a = segment_volume(ras, model, register=False)
    b = segment_volume(las, model, register=False)
    assert np.array_equal(b.labels.affine, las_affine) and b.labels.shape == SHAPE
    assert np.array_equal(np.asarray(b.labels.data), np.asarray(a.labels.data)[::-1])


def test_oblique_anisotropic_subject_round_trip(toy_model_path):
    model = load_model(toy_model_path)
    image, _ = phantom()
    template = Volume(image, grid_affine())
    direct = np.asarray(segment_volume(template, model, register=False).labels.data)
    # the same anatomy scanned on an oblique grid with 1.3 x 0.9 x 1.6 mm voxels
    angle = np.deg2rad(15)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    oblique = np.eye(4)
    oblique[:3, :3] = rot @ np.diag([1.3, 0.9, 1.6])
    oblique[:3, 3] = [-17, -18, -13]
    shape = (27, 40, 19)
    subject = resample(template, shape, oblique)
    result = segment_volume(subject, model, register=False)
    assert result.labels.shape == shape and np.array_equal(result.labels.affine, oblique)
    expected = resample(Volume(direct, grid_affine()), shape, oblique, kind="label").data
    inside = (np.asarray(subject.data) > 0) & (expected > 0)
    assert (np.asarray(result.labels.data)[inside] == expected[inside]).mean() > 0.85


def textured(shape=(48, 56, 44), seed=0):
    """A brain-sized-ish ellipsoid with a smooth random texture (the plain phantom is too symmetric
    and featureless to pin an affine down to a tenth of a millimetre)."""
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    c = (np.array(shape) - 1) / 2
    r = (((idx - c) / (np.array(shape) * 0.42)) ** 2).sum(-1)
    tex = sum(np.sin(idx @ rng.normal(0, 0.5, 3) + rng.uniform(0, 6.3)) for _ in range(6))
    return np.where(r < 1, 1.0 + 0.15 * tex + 0.3 * (idx[..., 0] > c[0]), 0).astype(np.float32)


def motion(kind):
    a = np.deg2rad(10)
    m = np.eye(4)
    m[:3, :3] = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    if kind == "affine":
        m[:3, :3] = m[:3, :3] @ np.array([[1.06, 0.03, 0], [0, 0.96, 0.02], [0, 0, 1.03]])
    m[:3, 3] = [3.0, -4.0, 2.5]
    return m


@pytest.mark.parametrize("kind", ["rigid", "affine"])
@pytest.mark.parametrize("how", ["header", "resampled"])
def test_registration_recovers_a_known_motion_well_under_a_millimetre(kind, how):
    """Issue 17: the tolerance matches a Dice budget of 0.01 on thin structures (a tenth of a voxel),
    and the final similarity says the registration worked."""
    image = textured()
    truth = motion(kind)
    if how == "header":  # the same voxels with a moved header: the exact answer is `truth`
        moving = Volume(image, truth)
    else:  # the moved anatomy resampled onto another grid (interpolation blurs it a little)
        grid = np.eye(4)
        grid[:3, 3] = -4
        moving = resample(Volume(image, truth), (56, 60, 52), grid)
    found = register(moving, Volume(image, np.eye(4)))
    pts = np.c_[np.argwhere(image > 0), np.ones(int((image > 0).sum()))].astype(float)
    err = np.linalg.norm((pts @ found.transform.T - pts @ truth.T)[:, :3], axis=1)
    assert err.mean() < 0.15 and err.max() < 0.3
    assert found.similarity > 0.95
    assert np.allclose(register_affine(moving, Volume(image, np.eye(4))), found.transform)


def test_a_failed_registration_scores_a_low_similarity():
    image = textured()
    noise = np.random.default_rng(3).random(image.shape).astype(np.float32) * (image > 0)
    assert register(Volume(noise, motion("rigid")), Volume(image, np.eye(4))).similarity < LOW_SIMILARITY
    turned = np.eye(4)
    turned[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]  # a header that is 90 degrees wrong
    assert register(Volume(image, turned), Volume(image, np.eye(4))).similarity < LOW_SIMILARITY


def test_segmenting_a_moved_header_equals_segmenting_in_place(toy_model_path, capsys):
    """The pipeline undoes a rigid motion of the header: the labels equal those segmented in place
    (the known transform makes both resamplings identities), and the similarity is reported."""
    model = load_model(toy_model_path)
    image, _ = phantom()
    in_place = segment_volume(Volume(image, grid_affine()), model, register=False)
    moved = segment_volume(Volume(image, motion("rigid") @ grid_affine()), model, register=True, progress=True)
    a, b = np.asarray(in_place.labels.data), np.asarray(moved.labels.data)
    brain = image > 0
    assert (a[brain] == b[brain]).mean() > 0.97
    assert moved.registration_similarity > 0.99 and in_place.registration_similarity is None
    err = capsys.readouterr().err
    assert f"(similarity {moved.registration_similarity:.3f})" in err and "register:" in err


def _crafted_engine(monkeypatch, model):
    """Make the pipeline's engine return the toy model's labels plus a stray piece of the blob (7)
    in the shell, where the atlas gives 7 probability 0, and a stray core (2) voxel that the atlas
    allows there (the core's own territory is a piece apart)."""
    import spatialseg_fast.pipeline as pipeline

    image, labels = phantom()
    engine = np.asarray(segment(image, model, mask=image > 0, precision="fp32"))
    crafted = engine.copy()
    crafted[4:6, 16:18, 12:14] = 7
    assert (crafted == 7).sum() > 8
    monkeypatch.setattr(pipeline, "segment", lambda *a, **k: crafted)
    return image, crafted


def test_cleanup_runs_on_the_template_grid_each_rule_on_its_own(toy_model_path, monkeypatch, capsys):
    """On the template grid (no registration, identity resampling) the pipeline's labels are the
    engine's with the atlas rule (a model with an atlas, by default), or the islands rule
    (atlas_support=False, by default 0.3), or both, or neither."""
    model = load_model(toy_model_path)
    image, crafted = _crafted_engine(monkeypatch, model)
    assert outside_atlas(crafted, model.atlas, VALUES).sum() == 8
    run = lambda **k: np.asarray(segment_volume(Volume(image, grid_affine()), model, register=False, **k).labels.data)  # noqa: E731
    np.testing.assert_array_equal(run(cleanup=0, atlas_support=False), crafted)
    default = run(progress=True)
    assert "cleanup:" in capsys.readouterr().err
    np.testing.assert_array_equal(default, remove_outside_atlas(crafted, model.atlas, VALUES))
    assert not outside_atlas(default, model.atlas, VALUES).any() and not np.array_equal(default, crafted)
    islands = run(atlas_support=False)
    np.testing.assert_array_equal(islands, remove_islands(crafted, keep_fraction=0.3))
    assert not np.array_equal(islands, crafted)
    np.testing.assert_array_equal(run(cleanup=1.0), remove_islands(remove_outside_atlas(crafted, model.atlas, VALUES),
                                                                   keep_fraction=1.0))
    with pytest.raises(ValueError, match="cleanup"):
        run(cleanup=-0.5)
    with pytest.raises(ValueError, match="atlas_min_prob"):
        run(atlas_min_prob=1.0)
    import spatialseg_fast.pipeline as pipeline

    thresholds, rule = [], pipeline.remove_outside_atlas
    monkeypatch.setattr(pipeline, "remove_outside_atlas", lambda *a, **k: thresholds.append(k["min_prob"]) or rule(*a, **k))
    run()
    run(atlas_min_prob=0.5)
    assert thresholds == [DEFAULT_ATLAS_MIN_PROB, 0.5]


def test_cleanup_flags_reach_the_pipeline_from_the_command_line(tmp_path, toy_model_path, monkeypatch, capsys):
    import spatialseg_fast.pipeline as pipeline

    seen = []
    real = pipeline.segment_volume
    monkeypatch.setattr(pipeline, "segment_volume", lambda *a, **k: seen.append((k["cleanup"], k["atlas_support"], k["atlas_min_prob"])) or real(*a, **k))
    image, _ = phantom()
    src = write(tmp_path / "s.nii.gz", image, grid_affine())
    for extra, expected in (((), (None, True, DEFAULT_ATLAS_MIN_PROB)), (("--cleanup", "0", "--no-atlas-support"), (0.0, False, DEFAULT_ATLAS_MIN_PROB)),
                            (("--cleanup", "0.5", "--atlas-min-prob", "0.1"), (0.5, True, 0.1))):
        assert run_segment(tmp_path, toy_model_path, src, extra=extra) == 0
        assert seen[-1] == expected
    import spatialseg_fast.batch as batch

    def capture(*a, **k):  # the cohort path (Dask workers): what it would send each worker
        seen.append((k["cleanup"], k["atlas_support"], k["atlas_min_prob"]))
        raise ValueError("captured")

    monkeypatch.setattr(batch, "segment_many", capture)
    assert run_segment(tmp_path, toy_model_path, src, extra=("--workers", "2", "--cleanup", "0.2", "--no-atlas-support")) != 0
    assert seen[-1] == (0.2, False, DEFAULT_ATLAS_MIN_PROB)
    assert run_segment(tmp_path, toy_model_path, src, extra=("--workers", "2", "--atlas-min-prob", "0.2")) != 0
    assert seen[-1] == (None, True, 0.2)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_segment(tmp_path, toy_model_path, src, extra=("--cleanup", "2"))
    assert exc.value.code == 2 and "keep fraction" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run_segment(tmp_path, toy_model_path, src, extra=("--atlas-min-prob", "1"))
    assert exc.value.code == 2 and "atlas probability" in capsys.readouterr().err
    n = len(seen)
    assert run_segment(tmp_path, toy_model_path, src, extra=("--atlas-min-prob", "0.1", "--no-atlas-support")) == 2
    assert "give one of them" in capsys.readouterr().err and len(seen) == n


# -- the command line -------------------------------------------------------------------------
def run_segment(tmp_path, model, *inputs, extra=()):
    return main(["segment", *map(str, inputs), "-o", str(tmp_path / "out"), "--model", str(model), "--no-register",
                 "--quiet", *extra])


def test_outputs_volumes_qc_and_skip_existing(tmp_path, toy_model_path, capsys):
    image, _ = phantom()
    src = write(tmp_path / "sub-01_T1w.nii.gz", image, grid_affine())
    code = run_segment(tmp_path, toy_model_path, src,
                       extra=("--volumes", str(tmp_path / "vol.csv"), "--qc", str(tmp_path / "qc"), "--probabilities", "2,7"))
    assert code == 0
    out = tmp_path / "out"
    labels = nib.load(str(out / "sub-01_T1w_labels.nii.gz"))
    data = np.asanyarray(labels.dataobj)
    assert data.shape == SHAPE and np.allclose(labels.affine, grid_affine()) and set(np.unique(data)) <= set(VALUES)
    assert not (data[image == 0] != 0).any()  # nothing outside the brain mask
    rows = [line.split(",") for line in (tmp_path / "vol.csv").read_text().strip().splitlines()[1:]]
    assert sum(float(r[3]) for r in rows) == pytest.approx(float((data != 0).sum()))  # 1 mm^3 voxels
    assert {r[2] for r in rows} == {"core", "shell", "blob"}
    png = (tmp_path / "qc" / "sub-01_T1w_qc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 500
    prob = np.asanyarray(nib.load(str(out / "sub-01_T1w_prob-7.nii.gz")).dataobj)
    assert prob.shape == SHAPE and 0 <= prob.min() and prob.max() <= 1
    capsys.readouterr()
    before = (tmp_path / "vol.csv").read_text()
    assert run_segment(tmp_path, toy_model_path, src, extra=("--skip-existing", "--volumes", str(tmp_path / "vol.csv"))) == 0
    assert "skipped" in capsys.readouterr().out
    assert (tmp_path / "vol.csv").read_text() == before  # a skipped subject keeps its rows


def test_argument_mistakes_are_refused_before_any_work(tmp_path, toy_model_path, capsys):
    image, _ = phantom()
    a = write(tmp_path / "a" / "T1w.nii.gz", image, grid_affine()) if (tmp_path / "a").mkdir() is None else None
    b = write(tmp_path / "b" / "T1w.nii.gz", image, grid_affine()) if (tmp_path / "b").mkdir() is None else None
    c = write(tmp_path / "c.nii.gz", image, grid_affine())
    cases = [((a, b), (), "same output name"),
             ((a,), ("--qc", str(b)), "give a .png file"),  # --qc must not swallow an input scan
             ((a, c), ("--qc", str(tmp_path / "x.png")), "single input"),
             ((a,), ("--device", "gpu"), "--device must be"),
             ((a,), ("--threads", "0"), "--threads must be"),
             ((a,), ("--volumes", str(tmp_path / "missing" / "v.csv")), "does not exist")]
    for inputs, extra, message in cases:
        assert run_segment(tmp_path, toy_model_path, *inputs, extra=extra) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert np.asanyarray(nib.load(str(b)).dataobj).shape == SHAPE  # untouched


def test_batch_continues_past_a_failing_subject(tmp_path, toy_model_path, capsys):
    image, _ = phantom()
    good = write(tmp_path / "a.nii.gz", image, grid_affine())
    bad = write(tmp_path / "b.nii.gz", np.zeros(SHAPE, np.float32), grid_affine())
    assert run_segment(tmp_path, toy_model_path, good, bad) == 1
    err = capsys.readouterr().err
    assert "b: error:" in err and "every voxel is zero" in err and "1 of 2 subjects failed" in err
    assert (tmp_path / "out" / "a_labels.nii.gz").is_file() and not (tmp_path / "out" / "b_labels.nii.gz").exists()


def bad_inputs(tmp_path):
    image, _ = phantom()
    a = grid_affine()
    cases = {
        "missing": (tmp_path / "nope.nii.gz", "no such file"),
        "not nifti": (tmp_path / "notes.txt", "not a NIfTI file"),
        "garbage": (tmp_path / "garbage.nii", "cannot be read as NIfTI"),
        "truncated": (tmp_path / "cut.nii.gz", "cannot be read as NIfTI"),
        "2d": (write(tmp_path / "flat.nii.gz", image[:, :, 10], a), "expected a 3D image"),
        "5d": (write(tmp_path / "five.nii.gz", image[..., None, None].repeat(2, 3), a), "expected a 3D image"),
        "nan": (tmp_path / "nan.nii.gz", "NaN or infinite"),
        "zero": (write(tmp_path / "zero.nii.gz", np.zeros(SHAPE, np.float32), a), "every voxel is zero"),
    }
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "garbage.nii").write_bytes(b"\x00" * 400)
    whole = gzip.compress(nib.Nifti1Image(image, a).to_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    nan = image.copy()
    nan[3, 3, 3] = np.nan
    write(tmp_path / "nan.nii.gz", nan, a)
    return cases


@pytest.mark.parametrize("case", ["missing", "not nifti", "garbage", "truncated", "2d", "5d", "nan", "zero"])
def test_bad_images_give_one_line_errors(tmp_path, toy_model_path, capsys, case):
    path, message = bad_inputs(tmp_path)[case]
    # a lone missing input is refused before the model loads (exit 2, as for bad options); the others
    # fail as a subject (exit 1)
    assert run_segment(tmp_path, toy_model_path, path) == (2 if case == "missing" else 1)
    err = capsys.readouterr().err.strip().splitlines()
    assert any(message in line for line in err) and not any("Traceback" in line for line in err)
    assert not list((tmp_path / "out").glob("*labels*"))


def test_bad_masks_models_outputs_and_devices(tmp_path, toy_model_path, capsys, monkeypatch):
    image, _ = phantom()
    src = write(tmp_path / "s.nii.gz", image, grid_affine())
    empty = write(tmp_path / "empty.nii.gz", np.zeros(SHAPE, np.uint8), grid_affine())
    other = write(tmp_path / "other.nii.gz", np.ones((10, 10, 10), np.uint8), grid_affine())
    for mask, message in ((empty, "is empty"), (other, "on another grid")):
        assert run_segment(tmp_path, toy_model_path, src, extra=("--mask", str(mask))) == 1
        assert message in capsys.readouterr().err
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(toy_model_path.read_bytes()[:1000])
    assert run_segment(tmp_path, broken, src) == 2
    assert "not a readable spatialseg_fast model" in capsys.readouterr().err
    from spatialseg_fast.model import io

    model = load_model(toy_model_path)
    monkeypatch.setattr(io, "FORMAT_VERSION", 99)
    future = tmp_path / "future.safetensors"
    save_model(model, future, metadata=model.metadata)
    monkeypatch.undo()
    assert run_segment(tmp_path, future, src) == 2
    assert "format version '99'" in capsys.readouterr().err
    # an output "folder" that is a file, and one the user may not write to (simulated: tests may run as root)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["segment", str(src), "-o", str(blocker), "--model", str(toy_model_path), "--quiet"]) == 2
    assert "is an existing file" in capsys.readouterr().err
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("ro") else real_access(p, mode))
    assert main(["segment", str(src), "-o", str(tmp_path / "ro"), "--model", str(toy_model_path), "--quiet"]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_cuda_asked_without_cuda(tmp_path, toy_model_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    image, _ = phantom()
    src = write(tmp_path / "s.nii.gz", image, grid_affine())
    assert run_segment(tmp_path, toy_model_path, src, extra=("--device", "cuda")) == 2
    assert "CUDA is not available" in capsys.readouterr().err


# -- loader fuzz ------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=5),
       dtype=st.sampled_from(["uint8", "int16", "float32", "float64", "int32"]),
       fill=st.sampled_from([0.0, 1.0, np.nan, np.inf, -3.0]),
       scale=st.sampled_from([1.0, 0.0, -2.0, np.nan, 1e-12]))
def test_loader_fuzz_only_raises_value_errors(tmp_path_factory, shape, dtype, fill, scale):
    path = tmp_path_factory.mktemp("fuzz") / "x.nii.gz"
    data = np.full(shape, 0 if np.dtype(dtype).kind in "iu" and not np.isfinite(fill) else fill).astype(dtype)
    affine = np.diag([scale, 1.0, 1.0, 1.0])
    try:
        nib.save(nib.Nifti1Image(data, affine), str(path))
    except Exception:  # nibabel refuses to write some of these: nothing to load
        return
    try:
        v = load_volume(path)
    except ValueError as exc:
        assert str(exc).startswith(str(path))
        return
    assert v.data.ndim == 3 and v.data.dtype == np.float32 and np.isfinite(v.data).all() and v.data.any()


def test_a_failed_registration_is_warned_about(toy_model_path, capsys):
    model = load_model(toy_model_path)
    image, _ = phantom()
    noise = (np.random.default_rng(5).random(image.shape) * (image > 0)).astype(np.float32)
    result = segment_volume(Volume(noise, grid_affine()), model, register=True)
    assert result.registration_similarity < 0.5
    assert "warning: the registration to the template looks failed" in capsys.readouterr().err


def test_label_values_above_255_come_back_through_the_pipeline(tmp_path):
    """Label values up to 65535 make uint16 maps; mapping them back (the weighted vote) keeps them."""
    image, labels = phantom()
    values = (0, 2, 5, 300)
    big = np.where(labels == 7, 300, labels.astype(np.uint16)).astype(np.uint16)
    model = load_model(save_toy_model(tmp_path / "big.safetensors", big, values))
    for register in (False, True):
        out = segment_volume(Volume(image, motion("rigid") @ grid_affine()), model, register=register)
        data = np.asarray(out.labels.data)
        assert data.dtype == np.uint16 and set(np.unique(data)) <= set(values)


@pytest.mark.parametrize("extra, message", [
    (("--probabilities", "47,,48"), "--probabilities takes comma-separated label values"),
    (("--mask", "nope.nii.gz"), "--mask nope.nii.gz: no such file"),
    (("--qc", "q.jpg"), "the pictures are PNG"),
])
@pytest.mark.parametrize("path", [(), ("--shard", "1/1")], ids=["single run", "cohort"])
def test_bad_options_are_refused_before_any_work(tmp_path, capsys, extra, message, path):
    image, _ = phantom()
    src = write(tmp_path / "s.nii.gz", image, grid_affine())
    # a model file that does not exist: the options must be refused before it would be loaded
    assert run_segment(tmp_path, tmp_path / "no-model.safetensors", src, extra=extra + path) == 2
    err = capsys.readouterr().err
    assert message in err and "no-model" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "q.jpg").exists()


@pytest.mark.parametrize("path", [(), ("--shard", "1/1")], ids=["single run", "cohort"])
def test_inputs_none_of_which_exists_are_refused_before_the_model_loads(tmp_path, capsys, path):
    gone = [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"]
    assert run_segment(tmp_path, tmp_path / "no-model.safetensors", *gone, extra=path) == 2
    err = capsys.readouterr().err
    assert "none of the inputs is a file" in err and "no-model" not in err


def test_segment_names_the_bf16_opt_in_where_it_is_fast(tmp_path, toy_model_path, capsys, monkeypatch):
    from spatialseg_fast import precision

    image, _ = phantom()
    src = write(tmp_path / "sub-01_T1w.nii.gz", image, grid_affine())
    args = ["segment", str(src), "-o", str(tmp_path / "out"), "--model", str(toy_model_path), "--no-register",
            "--device", "cpu"]
    monkeypatch.setattr(precision, "cpu_bf16_unit", lambda: "AVX512-BF16")
    assert main(args) == 0
    assert "precision auto = fp32 (this CPU has AVX512-BF16: --precision bf16 is ~2x faster)" in capsys.readouterr().err
    monkeypatch.setattr(precision, "cpu_bf16_unit", lambda: None)  # bf16 would be emulated: nothing to suggest
    assert main([*args, "--skip-existing"]) == 0 and "precision" not in capsys.readouterr().err
