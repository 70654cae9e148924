"""Cohorts (spatialseg_fast.batch, `spatialseg segment --workers/--scheduler/--shard/--retries/--results`):
a LocalCluster of 2 worker processes gives a serial run's labels bit for bit; a bad input, a worker
that dies and a killed driver lose nothing; shards cover every subject once; SLURM job scripts."""
import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from spatialseg_fast import batch
from spatialseg_fast.batch import parse_shard, segment_many, select_shard

nib = pytest.importorskip("nibabel")

from test_pipeline import grid_affine, phantom, toy_model_path  # noqa: E402,F401 - the tiny model fixture

N_GOOD = 4


def write(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def subject_image(k: int) -> np.ndarray:
    """Five different tiny brains: the phantom, scaled and shifted in intensity per subject."""
    image, _ = phantom()
    return (image * (1 + 0.07 * k) + 0.02 * k * (image > 0)).astype(np.float32)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    return [write(folder / f"sub-{k:02d}_T1w.nii.gz", subject_image(k), grid_affine()) for k in range(N_GOOD)]


OPTIONS = dict(register=False, threads=1)


@pytest.fixture(scope="module")
def serial(cohort, toy_model_path, tmp_path_factory):
    """The reference: the whole cohort in this process (no Dask)."""
    out = tmp_path_factory.mktemp("serial")
    report = segment_many(cohort, out, model=toy_model_path, volumes=out / "volumes.csv", **OPTIONS)
    assert report.exit_code == 0 and report.count("ok") == N_GOOD
    return out


def labels_of(out: Path) -> dict:
    return {p.name: np.asanyarray(nib.load(str(p)).dataobj) for p in sorted(out.glob("*_labels.nii.gz"))}


def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- without Dask -----------------------------------------------------------------------------
def test_shards_cover_every_subject_exactly_once():
    paths = [f"/data/sub-{k:03d}.nii.gz" for k in range(10)]
    shuffled = paths[::-1]
    parts = [select_shard(shuffled, (i, 3)) for i in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(paths)  # every subject exactly once
    assert [len(p) for p in parts] == [4, 3, 3]
    assert parts[0] == select_shard(paths, "1/3")[::-1]  # the split follows the paths, not the given order
    assert select_shard(paths, "1/1") == paths
    for bad in ("0/3", "4/3", "3", "a/b"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


@pytest.mark.parametrize("env, expected", [
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"}, (1, 4)),
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2"},
     (4, 4)),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3"}, (3, 3)),
    ({"SGE_TASK_ID": "5", "SGE_TASK_FIRST": "1", "SGE_TASK_LAST": "10", "SGE_TASK_STEPSIZE": "1"}, (5, 10)),
])
def test_shard_auto_from_job_array_variables(env, expected):
    assert parse_shard("auto", env) == expected


def test_shard_auto_outside_an_array_says_what_to_do():
    with pytest.raises(ValueError, match="not inside a job array"):
        parse_shard("auto", {})
    with pytest.raises(ValueError, match=r"--shard \$PBS_ARRAY_INDEX/N"):
        parse_shard("auto", {"PBS_ARRAY_INDEX": "3"})


def test_without_dask_workers_and_scheduler_say_what_to_install(tmp_path, cohort, toy_model_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_dask(name, *args, **kwargs):
        if name.split(".")[0] in ("distributed", "dask", "dask_jobqueue"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    for kwargs in ({"workers": 2}, {"executor": "tcp://127.0.0.1:8786"}):
        with pytest.raises(batch.ClusterUnavailableError, match=r'pip install "spatialseg_fast\[cluster\]"') as err:
            segment_many(cohort[:1], tmp_path / "x", model=toy_model_path, **kwargs)
        assert "\n" not in str(err.value)
    # one worker still works, in this process
    report = segment_many(cohort[:1], tmp_path / "one", model=toy_model_path, workers=1, **OPTIONS)
    assert report.mode == "in-process" and report.count("ok") == 1


def test_shards_through_the_command_line(tmp_path, cohort, toy_model_path, serial, monkeypatch, capsys):
    out = tmp_path / "out"
    for i in (1, 2, 3):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(i))
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
        monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
        code = cli(["segment", *map(str, cohort), "-o", str(out), "--model", str(toy_model_path), "--no-register",
                    "--threads", "1", "--shard", "auto", "--results", str(tmp_path / f"results_{i}.csv")])
        assert code == 0
        assert f"(shard {i}/3 of {N_GOOD})" in capsys.readouterr().out
    assert labels_of(out).keys() == labels_of(serial).keys()
    rows = sum((read_rows(tmp_path / f"results_{i}.csv") for i in (1, 2, 3)), [])
    assert sorted(r["subject"] for r in rows) == sorted(p.name[:-7] for p in cohort)  # each exactly once
    for name, data in labels_of(out).items():
        assert np.array_equal(data, labels_of(serial)[name])


# -- the command line (cli.py gains these options through cli_batch) --------------------------
def cli(argv) -> int:
    """`spatialseg` with the cohort options, whether or not cli.py registers them yet."""
    from spatialseg_fast import cli as cli_module
    from spatialseg_fast.cli_batch import add_batch_arguments, cohort_requested, run_cohort

    parser = cli_module.build_parser()
    segment = next(a for a in parser._subparsers._group_actions).choices["segment"]
    if any("--workers" in a.option_strings for a in segment._actions):
        return cli_module.main(argv)
    add_batch_arguments(segment)
    args = parser.parse_args(argv)
    return run_cohort(args) if cohort_requested(args) else args.func(args)


def test_killed_driver_resumes_and_redoes_only_what_is_missing(tmp_path, cohort, toy_model_path, serial, capsys):
    """The driver is killed (with its whole process group) mid-run; the same command again loses
    nothing and redoes only the subjects without labels."""
    out, results = tmp_path / "out", tmp_path / "results.csv"
    script = tmp_path / "drive.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import spatialseg_fast.batch as b
        real = b.write_subject
        def slow(path, *a, **k):  # the third subject never ends: the driver is killed in it
            if "sub-02" in str(path):
                print("stuck", flush=True)
                time.sleep(600)
            return real(path, *a, **k)
        b.write_subject = slow
        from test_batch import cli
        sys.exit(cli(sys.argv[1:]))
    """))
    argv = ["segment", *map(str, cohort), "-o", str(out), "--model", str(toy_model_path), "--no-register", "--threads",
            "1", "--skip-existing", "--results", str(results), "--volumes", str(tmp_path / "volumes.csv")]
    proc = subprocess.Popen([sys.executable, str(script), *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    try:
        for line in proc.stdout:
            if "stuck" in line:
                break
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    first = labels_of(out)
    assert sorted(first) == ["sub-00_T1w_labels.nii.gz", "sub-01_T1w_labels.nii.gz"]
    stamps = {name: (out / name).stat().st_mtime_ns for name in first}
    before = read_rows(results)
    assert [r["subject"] for r in before] == ["sub-00_T1w", "sub-01_T1w"] and {r["status"] for r in before} == {"ok"}
    assert not (tmp_path / "volumes.csv").exists()  # written at the end only

    capsys.readouterr()
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("labels exist, skipped") == 2 and printed.count(": ok in") == N_GOOD - 2
    assert f"{N_GOOD - 2} segmented, 2 skipped, 0 failed" in printed
    assert {name: (out / name).stat().st_mtime_ns for name in first} == stamps  # not redone
    after = read_rows(results)
    assert after[:2] == before  # the first run's rows are kept as they were
    assert sorted(r["subject"] for r in after) == sorted(p.name[:-7] for p in cohort)
    assert [r["status"] for r in after[2:]] == ["ok"] * (N_GOOD - 2)
    final = labels_of(out)
    assert final.keys() == labels_of(serial).keys()
    assert all(np.array_equal(final[k], v) for k, v in labels_of(serial).items())
    assert (tmp_path / "volumes.csv").read_text() == (serial / "volumes.csv").read_text()  # every subject's rows


# -- on a LocalCluster of 2 worker processes --------------------------------------------------
class DieOnce:
    """A worker plugin that makes the per-subject flow kill its worker process (os._exit) for
    inputs named crash-once* on their first attempt (a marker file remembers it) and for
    crash-always* on every attempt."""

    name = "spatialseg-test-die-once"

    def __init__(self, marker_dir):
        self.marker_dir = str(marker_dir)

    def setup(self, worker):
        import spatialseg_fast.batch as b

        real, marker_dir = b.write_subject, self.marker_dir
        if getattr(real, "_dies", False):
            return

        def write_subject(path, *args, **kwargs):
            name = Path(path).name
            marker = Path(marker_dir) / (name + ".attempted")
            if name.startswith("crash-always") or (name.startswith("crash-once") and not marker.exists()):
                marker.touch()
                os._exit(13)
            return real(path, *args, **kwargs)

        write_subject._dies = True
        b.write_subject = write_subject


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    distributed = pytest.importorskip("distributed")
    c = batch.local_cluster_client(2, threads=1)
    plugin = type("DieOnce", (DieOnce, distributed.WorkerPlugin), {})(tmp_path_factory.mktemp("markers"))
    c.register_plugin(plugin)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


def test_two_workers_give_the_serial_labels_bit_for_bit(tmp_path, cohort, toy_model_path, serial):
    """segment_many(workers=2): its own LocalCluster of 2 processes, started and closed."""
    pytest.importorskip("distributed")
    out = tmp_path / "out"
    seen = []
    report = segment_many(cohort, out, workers=2, model=toy_model_path, results=tmp_path / "results.csv",
                          volumes=out / "volumes.csv", on_subject=lambda row, counts: seen.append(dict(counts)),
                          register=False)
    assert report.mode == "dask" and report.workers == 2 and report.exit_code == 0 and report.count("ok") == N_GOOD
    assert labels_of(out).keys() == labels_of(serial).keys()
    for name, data in labels_of(serial).items():
        assert np.array_equal(labels_of(out)[name], data), name
    assert (out / "volumes.csv").read_text() == (serial / "volumes.csv").read_text()
    rows = read_rows(tmp_path / "results.csv")
    assert sorted(r["subject"] for r in rows) == sorted(p.name[:-7] for p in cohort)
    assert len({r["worker"] for r in rows}) == 2  # both workers took subjects
    assert all(float(r["seconds"]) > 0 and float(r["brain_volume_mm3"]) > 0 and r["attempts"] == "1"
               and float(r["peak_rss_mb"]) > 0 for r in rows)
    loads = {}
    for r in report.rows:  # the model is loaded once per worker process, not per subject
        loads[r["pid"]] = max(loads.get(r["pid"], 0), r["model_loads"])
    assert set(loads.values()) == {1}
    assert {r["threads"] for r in report.rows} == {max(1, os.cpu_count() // 2)}  # cores // workers, explicitly
    assert [c["done"] for c in seen] == list(range(1, N_GOOD + 1)) and seen[-1]["remaining"] == 0


def test_bad_input_fails_alone_and_is_not_retried(tmp_path, cohort, toy_model_path, client):
    flat = write(tmp_path / "flat.nii.gz", subject_image(0)[:, :, 10], grid_affine())
    nan_image = subject_image(0)
    nan_image[3, 3, 3] = np.nan
    nan = write(tmp_path / "nan.nii.gz", nan_image, grid_affine())
    (tmp_path / "garbage.nii").write_bytes(b"\x00" * 400)
    inputs = [cohort[0], flat, tmp_path / "garbage.nii", cohort[1], nan, tmp_path / "missing.nii.gz"]
    report = segment_many(inputs, tmp_path / "out", executor=client, model=toy_model_path, retries=3, **OPTIONS)
    status = {r["subject"]: (r["status"], r["error"], r["attempts"]) for r in report.rows}
    assert status["sub-00_T1w"][0] == status["sub-01_T1w"][0] == "ok"
    assert "expected a 3D image" in status["flat"][1] and "NaN or infinite" in status["nan"][1]
    assert "cannot be read as NIfTI" in status["garbage"][1] and "no such file" in status["missing"][1]
    assert all(s == "failed" and a == 1 for k, (s, _, a) in status.items() if k not in ("sub-00_T1w", "sub-01_T1w"))
    assert report.exit_code == 1 and sorted(report.failed) == ["flat", "garbage", "missing", "nan"]
    assert sorted(labels_of(tmp_path / "out")) == ["sub-00_T1w_labels.nii.gz", "sub-01_T1w_labels.nii.gz"]


def test_a_worker_that_dies_is_retried_then_reported_crashed(tmp_path, cohort, toy_model_path, serial, client):
    once = write(tmp_path / "crash-once.nii.gz", subject_image(2), grid_affine())
    always = write(tmp_path / "crash-always.nii.gz", subject_image(3), grid_affine())
    report = segment_many([once, cohort[0], always], tmp_path / "out", executor=client, model=toy_model_path, retries=1,
                          results=tmp_path / "results.csv", **OPTIONS)
    rows = {r["subject"]: r for r in read_rows(tmp_path / "results.csv")}
    assert rows["crash-once"]["status"] == "ok" and rows["crash-once"]["attempts"] == "2"
    assert rows["sub-00_T1w"]["status"] == "ok"
    assert rows["crash-always"]["status"] == "crashed" and rows["crash-always"]["attempts"] == "2"
    assert "worker died on 2 attempts" in rows["crash-always"]["error"]
    assert report.exit_code == 1 and report.failed == ["crash-always"]
    done = np.asanyarray(nib.load(str(tmp_path / "out" / "crash-once_labels.nii.gz")).dataobj)
    assert np.array_equal(done, labels_of(serial)["sub-02_T1w_labels.nii.gz"])  # same image as sub-02
    assert not (tmp_path / "out" / "crash-always_labels.nii.gz").exists()


def test_scheduler_through_the_command_line(tmp_path, cohort, toy_model_path, serial, client, capsys):
    bad = write(tmp_path / "zero.nii.gz", np.zeros((30, 34, 28), np.float32), grid_affine())
    address = client.scheduler.address
    code = cli(["segment", *map(str, cohort[:2]), str(bad), "-o", str(tmp_path / "out"), "--model", str(toy_model_path),
                "--no-register", "--scheduler", address, "--results", str(tmp_path / "r.csv")])
    captured = capsys.readouterr()
    assert code == 1
    assert f"3 subjects on the Dask scheduler at {address}" in captured.out
    assert "ok in" in captured.out and "subjects/h" in captured.out and "remaining 0" in captured.out + captured.err
    assert "zero: error:" in captured.err and "every voxel is zero" in captured.err
    assert "1 of 3 subjects failed: zero" in captured.err
    for name in ("sub-00_T1w_labels.nii.gz", "sub-01_T1w_labels.nii.gz"):
        got = np.asanyarray(nib.load(str(tmp_path / "out" / name)).dataobj)
        assert np.array_equal(got, labels_of(serial)[name])
    assert [r["status"] for r in read_rows(tmp_path / "r.csv")].count("ok") == 2


@pytest.mark.parametrize("extra, message", [(("--workers", "0"), "--workers must be >= 1"),
                                            (("--retries", "-1"), "--retries must be >= 0"),
                                            (("--workers", "2", "--scheduler", "tcp://x:1"), "give one of them"),
                                            (("--shard", "4/3"), "1 <= I <= N")])
def test_cohort_argument_mistakes(tmp_path, cohort, toy_model_path, capsys, extra, message):
    code = cli(["segment", str(cohort[0]), "-o", str(tmp_path / "out"), "--model", str(toy_model_path), *extra])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- documentation ----------------------------------------------------------------------------
def test_slurm_job_script_renders_with_the_documented_options():
    """docs/cluster.md's SLURMCluster call, rendered (not submitted)."""
    pytest.importorskip("dask_jobqueue")
    from dask_jobqueue import SLURMCluster

    doc = (Path(__file__).parents[1] / "docs" / "cluster.md").read_text()
    assert "SLURMCluster(" in doc and "--shard auto" in doc
    with SLURMCluster(cores=8, processes=1, memory="4GiB", walltime="04:00:00", queue="normal", account="myproject",
                      job_extra_directives=["--output=logs/dask-%j.out"], local_directory="$TMPDIR",
                      job_script_prologue=["source /shared/venvs/spatialseg/bin/activate"]) as cluster:
        script = cluster.job_script()
    for piece in ("#SBATCH --cpus-per-task=8", "#SBATCH --mem=4G", "#SBATCH -t 04:00:00", "#SBATCH -p normal",
                  "#SBATCH -A myproject", "--nthreads 8", "--memory-limit 4.00GiB", "--local-directory $TMPDIR",
                  "source /shared/venvs/spatialseg/bin/activate"):
        assert piece in script, piece
    for option in ("cores=8", "processes=1", 'memory="4GiB"', 'local_directory="$TMPDIR"', 'queue="normal"',
                   'account="myproject"', 'walltime="04:00:00"', '"--output=logs/dask-%j.out"',
                   '"source /shared/venvs/spatialseg/bin/activate"'):
        assert option in doc, option


def test_results_report_the_registration_similarity(cohort, toy_model_path, tmp_path):
    """Batch users flag failed registrations by this column: a number with registration, empty without."""
    out = tmp_path / "reg"
    report = segment_many(cohort[:1], out, model=toy_model_path, results=out / "r.csv", register=True, threads=1)
    assert report.exit_code == 0
    (row,) = read_rows(out / "r.csv")
    assert float(row["registration_similarity"]) > 0.9
    out2 = tmp_path / "noreg"
    segment_many(cohort[:1], out2, model=toy_model_path, results=out2 / "r.csv", **OPTIONS)
    assert read_rows(out2 / "r.csv")[0]["registration_similarity"] == ""
