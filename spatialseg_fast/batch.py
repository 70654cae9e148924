"""Cohorts: many subjects through the per-subject pipeline, on Dask workers or in this process.

:func:`segment_many` hands every input to :func:`write_subject` (``segment_file``, then the QC
picture and probability maps, then the labels file, written atomically and last) and owns the
cohort's bookkeeping. The per-subject flow knows nothing of workers. Where it runs:

- in this process (``workers=None``; ``workers=1`` too when Dask is not installed);
- on a ``distributed.LocalCluster`` of ``workers`` worker processes on this machine;
- on any ``distributed.Client`` passed as ``executor=`` (or a scheduler address): a SLURM / PBS /
  SGE / LSF cluster through ``dask-jobqueue``, a Kubernetes one, ... (docs/cluster.md).

Dask is the optional extra ``pip install "spatialseg_fast[cluster]"``; this module imports it only
when a cluster is asked for.

Per worker process: the model (with its registration template) is loaded once, on the first
subject, and kept (a cache keyed by the model file's path, size and modification time); one
subject runs at a time (a per-process lock, whatever the worker's Dask thread count), with
``threads`` torch/OpenMP threads: the ``threads`` argument, else the Dask worker's own thread count.
Our LocalCluster gives each of its ``workers`` processes one Dask thread and ``cores // workers``
torch/OpenMP threads, set explicitly (Dask's nanny would otherwise start workers with
OMP_NUM_THREADS=1; torch.set_num_threads is called in the worker as well).

Faults: a bad input (unreadable, 2D, NaN, all zero, ...) raises ValueError/RuntimeError/OSError in
the per-subject flow; that is a ``failed`` row, never retried. A worker process that dies (killed,
out of memory, os._exit) takes its subject with it: the subject is submitted again, at most
``retries`` times, then reported ``crashed``. Our LocalCluster's scheduler counts a death as a
failure at once (``allowed_failures=0``), so ``retries`` is exact there; a scheduler you started
yourself first retries on its own (``distributed.scheduler.allowed-failures``, 3 by default).

Resume: a subject is complete when its labels file exists (written atomically, after everything
else). With ``skip_existing`` a re-run skips those and redoes only the others; the results table
keeps the previous run's ``ok`` rows of the subjects it skips.

Results table (``results=CSV``): one row per subject, appended and flushed as each subject ends
(:data:`RESULT_COLUMNS`); the volumes table (``volumes=CSV``, mm^3 per structure, as
``spatialseg segment --volumes``) is written at the end.
"""
from __future__ import annotations

import csv
import io
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ._tables import csv_text, volume_rows
from .pipeline import segment_file, structure_volumes

RESULT_COLUMNS = ("subject", "status", "error", "seconds", "attempts", "worker", "brain_volume_mm3",
                  "registration_similarity", "peak_rss_mb", "input", "labels")
"""status: ok | skipped (labels already there) | failed (the input's fault; not retried) |
crashed (its worker died on every attempt). seconds: the per-subject flow's wall time (model
loading excluded). brain_volume_mm3: all labelled voxels. registration_similarity: the
registration's final similarity (registration.Registration.similarity; below 0.5 the
registration probably failed, see registration.LOW_SIMILARITY; empty with --no-register). peak_rss_mb: the
worker process's peak resident memory during this subject (Linux; else the process's peak)."""

PEAK_RSS_PER_SUBJECT = 3 * 2**30
"""The memory limit our LocalCluster gives each worker (capped at the machine's memory / workers):
one worker segmenting the 1 mm ICBM 2009c brain (173x209x173) with the shipped model, registration
included, peaked at 1.93 GB resident (fp32, 1 thread; 0.46 GB of it before the subject: torch and
the model), so 3 GiB leaves
about 60% headroom for larger inputs (docs/cluster.md)."""

CLUSTER_HINT = 'pip install "spatialseg_fast[cluster]"'


class ClusterUnavailableError(RuntimeError):
    """A Dask cluster was asked for and Dask (the ``cluster`` extra) is not installed."""


def require_distributed(what: str):
    """The ``distributed`` module, or a one-line ClusterUnavailableError saying what to install."""
    try:
        import distributed
    except ImportError:
        raise ClusterUnavailableError(f"{what} needs Dask: {CLUSTER_HINT}") from None
    return distributed


# -- names, shards ----------------------------------------------------------------------------
def subject_stem(path) -> str:
    """The subject's name: the file name without .nii/.nii.gz."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def labels_path(out_dir, stem: str) -> Path:
    return Path(out_dir) / f"{stem}_labels.nii.gz"


def parse_shard(text: str, environ=None) -> tuple[int, int]:
    """``"I/N"`` (1 <= I <= N) or ``"auto"``: the array task of a SLURM (SLURM_ARRAY_TASK_ID,
    _COUNT, _MIN, _STEP) or SGE job array (SGE_TASK_ID, _FIRST, _LAST, _STEPSIZE). PBS and LSF
    do not export an array's size: there, give ``$PBS_ARRAY_INDEX/N`` (or ``$LSB_JOBINDEX/N``)."""
    env = os.environ if environ is None else environ
    text = str(text).strip()
    if text.lower() == "auto":
        return _shard_from_env(env)
    parts = text.split("/")
    try:
        i, n = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--shard must be I/N (e.g. 2/10) or auto; got {text!r}") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard I/N needs 1 <= I <= N; got {text!r}")
    return i, n


def _shard_from_env(env) -> tuple[int, int]:
    def ints(*names):
        values = [env.get(n) for n in names]
        try:
            return [int(v) if v not in (None, "") else None for v in values]
        except ValueError:
            return [None] * len(names)

    task, count, first, step = ints("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
                                    "SLURM_ARRAY_TASK_STEP")
    if task is not None and count:
        index = (task - (first or 0)) // (step or 1) + 1 if first is not None else task + 1
        if not 1 <= index <= count:  # no MIN exported: take the IDs as 0..COUNT-1 or 1..COUNT
            index = task
        if 1 <= index <= count:
            return index, count
        raise ValueError(f"--shard auto: SLURM_ARRAY_TASK_ID={task} does not fit an array of {count} tasks")
    task, first, last, step = ints("SGE_TASK_ID", "SGE_TASK_FIRST", "SGE_TASK_LAST", "SGE_TASK_STEPSIZE")
    if task is not None and first is not None and last is not None:
        step = step or 1
        count = (last - first) // step + 1
        index = (task - first) // step + 1
        if 1 <= index <= count:
            return index, count
        raise ValueError(f"--shard auto: SGE_TASK_ID={task} is outside {first}-{last}:{step}")
    for name in ("PBS_ARRAY_INDEX", "PBS_ARRAYID", "LSB_JOBINDEX"):
        if env.get(name) not in (None, "", "0"):
            raise ValueError(f"--shard auto: {name} is set, but this scheduler does not export the array's size: "
                             f"give --shard ${name}/N (indices 1..N)")
    raise ValueError("--shard auto: not inside a job array (no SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, "
                     "no SGE_TASK_ID/SGE_TASK_FIRST/SGE_TASK_LAST); give --shard I/N")


def select_shard(inputs, shard) -> list:
    """The inputs of shard ``(i, n)``: those at ranks i-1, i-1+n, ... in the order of their absolute
    paths (the same split whatever order they were given in), returned in their given order."""
    inputs = list(inputs)
    if shard is None:
        return inputs
    i, n = parse_shard(shard) if isinstance(shard, str) else (int(shard[0]), int(shard[1]))
    if not 1 <= i <= n:
        raise ValueError(f"shard (i, n) needs 1 <= i <= n; got {(i, n)}")
    order = sorted(range(len(inputs)), key=lambda k: os.path.abspath(str(inputs[k])))
    keep = {k for rank, k in enumerate(order) if rank % n == i - 1}
    return [p for k, p in enumerate(inputs) if k in keep]


# -- the per-subject flow ---------------------------------------------------------------------
def write_subject(path, out_dir, model, *, stem: str | None = None, qc_path=None, save_mask: bool = False, **options):
    """Segment one input with ``segment_file(path, model, **options)`` and write its outputs to
    `out_dir`: the QC picture (``qc_path``), ``<stem>_prob-<label>.nii.gz`` per probability map
    asked for, and ``<stem>_labels.nii.gz`` last (atomically: its presence means the subject is
    complete); with `save_mask`, the brain mask used as ``<stem>_brainmask.nii.gz``. Returns the
    SegmentationResult."""
    from .volume import load_volume, save_volume, to_ras

    stem = stem or subject_stem(path)
    out = Path(out_dir)
    result = segment_file(path, model, **options)
    if qc_path:
        from .qc import qc_picture

        img = to_ras(load_volume(path))
        qc_picture(img.data, to_ras(result.labels).data, img.spacing, qc_path, label_values=model.config.output_values())
    for value, prob in result.probabilities.items():
        save_volume(prob, out / f"{stem}_prob-{value}.nii.gz")
    if save_mask and result.brain_mask is not None:
        save_volume(result.brain_mask, out / f"{stem}_brainmask.nii.gz")
    save_volume(result.labels, labels_path(out, stem))
    return result


# -- what runs in a worker process ------------------------------------------------------------
_SUBJECT_LOCK = threading.Lock()  # one subject at a time per process, whatever its Dask thread count
_MODELS: dict = {}  # (path, size, mtime) -> model, per process
_CONFIGS: dict = {}
_STATS = {"model_loads": 0, "model_load_s": 0.0}


def _model_key(path):
    p = Path(path).resolve()
    st = p.stat()
    return str(p), st.st_size, st.st_mtime_ns


def _model_path(path):
    if path is not None:
        return path
    from .model.io import ModelNotFoundError, default_model_path

    found = default_model_path()
    if found is None:
        raise ModelNotFoundError("no model given and this installation ships no default weights")
    return found


def cached_model(path=None):
    """The model at `path` (None: the shipped weights), loaded once per process and reused."""
    from .model import load_model

    key = _model_key(_model_path(path))
    model = _MODELS.get(key)
    if model is None:
        t0 = time.perf_counter()
        model = load_model(key[0])
        _STATS["model_load_s"] += time.perf_counter() - t0
        _STATS["model_loads"] += 1
        _MODELS.clear()  # one model per worker: a new file replaces the old one
        _MODELS[key] = model
    return model


def _cached_config(path=None):
    from types import SimpleNamespace

    from .model import read_config

    key = _model_key(_model_path(path))
    if key in _MODELS:
        return _MODELS[key]
    if key not in _CONFIGS:
        _CONFIGS[key] = SimpleNamespace(config=read_config(key[0])[0])
    return _CONFIGS[key]


def _worker_threads(job) -> int | None:
    if job.get("threads"):
        return int(job["threads"])
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def _reset_peak_rss() -> bool:
    try:  # Linux >= 4.0: resets VmHWM to the current resident size
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except (ImportError, OSError):
        return None


def _similarity(result) -> str:
    """The registration's final similarity (below registration.LOW_SIMILARITY: probably failed);
    empty without registration."""
    value = getattr(result, "registration_similarity", None)
    return "" if value is None else f"{float(value):.4f}"


def run_subject(job: dict, model=None) -> dict:
    """One subject, as a worker runs it: a row of RESULT_COLUMNS plus ``volumes`` (for the volumes
    table), ``model_loads`` / ``model_load_s`` (this process's, so far) and ``pid``. An error of the
    input is a ``failed`` row; anything else propagates (the driver decides)."""
    with _SUBJECT_LOCK:
        return _run_subject(job, model)


def _run_subject(job: dict, model) -> dict:
    target = labels_path(job["out_dir"], job["stem"])
    row = {"subject": job["stem"], "status": "ok", "error": "", "seconds": "", "worker": f"{socket.gethostname()}:{os.getpid()}",
           "brain_volume_mm3": "", "registration_similarity": "", "peak_rss_mb": "", "input": job["input"],
           "labels": str(target), "volumes": None}
    if job["skip_existing"] and target.exists():  # done meanwhile (another shard, an earlier attempt)
        row["status"] = "skipped"
        if job["want_volumes"]:
            from .volume import load_label_map

            try:
                holder = model if model is not None else _cached_config(job["model"])
                row["volumes"] = structure_volumes(load_label_map(target), holder)
                row["brain_volume_mm3"] = f"{sum(v for _, _, v in row['volumes']):.1f}"
            except (ValueError, OSError) as exc:
                row.update(status="failed", error=f"existing labels file unreadable: {exc}")
        return _stamp(row)
    threads = _worker_threads(job)
    if threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    try:
        model = model if model is not None else cached_model(job["model"])
    except (ValueError, OSError) as exc:
        row.update(status="failed", error=f"model: {exc}")
        return _stamp(row)
    options = dict(job["options"])
    if threads and options.get("threads") is None:
        options["threads"] = threads
    row["threads"] = options.get("threads") or _torch_threads()
    _reset_peak_rss()
    t0 = time.perf_counter()
    try:
        result = write_subject(job["input"], job["out_dir"], model, stem=job["stem"], qc_path=job.get("qc"), **options)
    except (ValueError, RuntimeError, OSError) as exc:  # the input's fault: not retried
        row.update(status="failed", error=str(exc) or type(exc).__name__, seconds=f"{time.perf_counter() - t0:.3f}")
        return _stamp(row)
    row.update(seconds=f"{time.perf_counter() - t0:.3f}", volumes=result.volumes,
               brain_volume_mm3=f"{sum(v for _, _, v in result.volumes):.1f}", registration_similarity=_similarity(result))
    return _stamp(row)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _stamp(row: dict) -> dict:
    peak = _peak_rss_mb()
    row["peak_rss_mb"] = f"{peak:.0f}" if peak is not None else ""
    row.update(model_loads=_STATS["model_loads"], model_load_s=_STATS["model_load_s"], pid=os.getpid())
    return row


# -- bookkeeping in the driver ----------------------------------------------------------------
@dataclass
class CohortReport:
    """What segment_many did: ``rows`` (one per subject, in input order; RESULT_COLUMNS plus
    ``attempts``, ``threads`` and the worker's ``model_loads``, ``model_load_s``, ``pid``), wall ``seconds``,
    ``startup_s`` (cluster start-up), ``run_s`` (first subject handed out -> last one back, model
    loading included), the counts, and ``exit_code`` (1 when any subject failed)."""
    rows: list = field(default_factory=list)
    seconds: float = 0.0
    startup_s: float = 0.0
    run_s: float = 0.0
    workers: int = 1
    mode: str = "in-process"

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    @property
    def failed(self) -> list:
        return [r["subject"] for r in self.rows if r["status"] in ("failed", "crashed")]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class _ResultsTable:
    """The results CSV: rewritten at the start with the previous run's rows that still hold, then
    one row appended, flushed and synced per finished subject (a killed run keeps its rows)."""

    def __init__(self, path, carried: list):
        from ._atomic import atomic_text

        self.path = Path(path)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(carried)
        atomic_text(self.path, buf.getvalue())
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=RESULT_COLUMNS, extrasaction="ignore", lineterminator="\n")

    def add(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()
        try:
            os.fsync(self.file.fileno())
        except OSError:
            pass

    def close(self) -> None:
        self.file.close()


def previous_rows(path) -> dict:
    """{subject: row} of the ``ok`` rows of an earlier results table (complete lines only)."""
    rows = {}
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("status") == "ok" and row.get("labels") and None not in row.values():
                    rows[row["subject"]] = row
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    return rows


def local_cluster_client(workers: int, *, threads: int | None = None, memory_limit=None, quiet: bool = True):
    """A ``distributed.Client`` on a new LocalCluster of `workers` processes, each with one Dask
    thread, ``threads`` (default: cores // workers) torch/OpenMP threads in its environment, the
    memory limit ``memory_limit`` (default: PEAK_RSS_PER_SUBJECT, capped at memory / workers), and
    a scheduler that reports a worker's death at once (``allowed_failures=0``: segment_many
    resubmits, counting attempts). Close it with ``client.close(); client.cluster.close()``."""
    import logging

    distributed = require_distributed(f"workers={workers}")
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    if memory_limit is None:
        memory_limit = default_memory_limit(workers)
    env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       memory_limit=memory_limit, env=env, dashboard_address=":0",
                                       scheduler_kwargs={"allowed_failures": 0},
                                       silence_logs=logging.CRITICAL if quiet else logging.WARNING)
    client = distributed.Client(cluster)
    client.run(_warm_up)  # imports torch and this package now: part of the start-up, not of a subject
    return client


def _warm_up() -> None:
    import spatialseg_fast.pipeline  # noqa: F401


def default_memory_limit(workers: int) -> int:
    """PEAK_RSS_PER_SUBJECT, capped at the machine's memory / workers."""
    try:
        import psutil

        total = psutil.virtual_memory().total
    except ImportError:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(min(PEAK_RSS_PER_SUBJECT, total // max(1, workers)))


def segment_many(inputs, out_dir, *, executor=None, workers: int | None = None, retries: int = 1,
                 skip_existing: bool = True, shard=None, model=None, results=None, volumes=None, qc=None,
                 threads: int | None = None, memory_limit=None, on_subject=None, **segment_options) -> CohortReport:
    """Segment every input into `out_dir` (see the module doc); returns a :class:`CohortReport`.

    executor: a ``distributed.Client`` or a scheduler address (``tcp://host:8786``); else
    workers: None = in this process, N = a LocalCluster of N worker processes (1 works in-process
    without Dask). retries: new attempts after a worker died with the subject. skip_existing:
    subjects whose labels file exists are not redone (resume). shard: ``(i, n)``, ``"I/N"`` or
    ``"auto"``: only subjects i, i+n, ... (1-based, by path). model: a model file (None: the
    shipped weights; in this process also a loaded model). results / volumes: CSV paths. qc: a
    folder for ``<stem>_qc.png`` per subject (or a .png file for a single input). threads:
    torch/OpenMP threads per subject. memory_limit: per LocalCluster worker (bytes or "4GiB").
    on_subject: called as ``on_subject(row, counts)`` after every subject; counts has done, failed,
    skipped, remaining, total and rate (subjects per hour). segment_options: passed to
    ``segment_file`` (register, device, precision, probabilities, mask_path, ...)."""
    from .model import SpatialSegNet, read_config

    t_start = time.perf_counter()
    inputs = [os.path.abspath(p) for p in select_shard(inputs, shard)]  # workers may run elsewhere
    stems = [subject_stem(p) for p in inputs]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise ValueError(f"several inputs would write the same output name ({', '.join(repeated)}); "
                         "rename them or run them into separate output folders")
    if retries < 0:
        raise ValueError(f"retries must be >= 0; got {retries}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1; got {workers}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    if segment_options.get("mask_path") is not None:
        if len(inputs) > 1:
            raise ValueError("a mask goes with a single input image")
        segment_options["mask_path"] = os.path.abspath(segment_options["mask_path"])
    qc_file = qc is not None and str(qc).lower().endswith(".png")
    if qc_file and len(inputs) > 1:
        raise ValueError("qc=FILE.png names the picture of a single input; give a folder for several")
    loaded = model if isinstance(model, SpatialSegNet) else None
    model_file = None if loaded is not None else (str(Path(model).resolve()) if model is not None else None)
    config = loaded.config if loaded is not None else read_config(_model_path(model_file))[0]
    wanted = segment_options.get("probabilities")
    if wanted:
        bad = [int(v) for v in wanted if int(v) not in set(config.output_values())]
        if bad:
            raise ValueError(f"probabilities: {bad} are not labels of this model")

    distributed = None
    client, own_client = None, False
    if executor is not None:
        distributed = require_distributed("a Dask scheduler")
        client = executor if not isinstance(executor, str) else None
        if client is None:  # an address, or a scheduler file (dask scheduler --scheduler-file)
            kw = {"scheduler_file": executor} if os.path.isfile(executor) else {"address": executor}
            client, own_client = distributed.Client(**kw), True
    elif workers is not None and workers > 1:
        distributed = require_distributed(f"workers={workers}")
    elif workers == 1:
        try:
            import distributed
        except ImportError:
            distributed = None  # one worker without Dask: in this process
    if loaded is not None and (client is not None or distributed is not None):
        raise ValueError("a loaded model cannot be sent to Dask workers: give the model's file path")

    out = Path(os.path.abspath(out_dir))
    for what, path in (("results", results), ("volumes", volumes)):
        if path is not None and not Path(path).resolve().parent.is_dir() and Path(path).resolve().parent != out.resolve():
            raise ValueError(f"{what} {path}: the folder {Path(path).resolve().parent} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    if qc is not None and not qc_file:
        Path(qc).mkdir(parents=True, exist_ok=True)
    report = CohortReport(mode="in-process")
    carried = previous_rows(results) if results and skip_existing else {}
    final: dict = {}
    counts = {"done": 0, "failed": 0, "skipped": 0, "total": len(inputs)}
    table = None

    def finish(row: dict, attempts: int) -> None:
        row["attempts"] = row.get("attempts") or attempts
        if row.get("_carried"):  # the table keeps the earlier run's row; for this run it was skipped
            row = dict(row, status="skipped")
        elif table is not None:
            table.add(row)
        final[row["subject"]] = row
        counts[{"ok": "done", "skipped": "skipped"}.get(row["status"], "failed")] += 1
        if on_subject is not None:
            elapsed = time.perf_counter() - t_run
            worked = counts["done"] + counts["failed"]
            on_subject(row, {**counts, "remaining": counts["total"] - counts["done"] - counts["failed"] - counts["skipped"],
                           "rate": 3600.0 * worked / elapsed if worked and elapsed > 0 else 0.0})

    jobs = []
    for path, stem in zip(inputs, stems):
        target = labels_path(out, stem)
        if skip_existing and target.exists() and not volumes:  # nothing to read back: no task
            old = carried.get(stem)
            jobs.append(("skip", path, stem, old))
            continue
        jobs.append(("run", path, stem, carried.get(stem) if skip_existing and target.exists() else None))
    keep = [old for kind, _, stem, old in jobs if old is not None and labels_path(out, stem).exists()]
    try:
        table = _ResultsTable(results, keep) if results else None
        t_run = time.perf_counter()
        job_of = {}
        for kind, path, stem, old in jobs:
            job_of[stem] = {"input": path, "stem": stem, "out_dir": str(out), "model": model_file,
                            "skip_existing": skip_existing, "want_volumes": bool(volumes), "threads": threads,
                            "qc": os.path.abspath(qc if qc_file else Path(qc) / f"{stem}_qc.png") if qc is not None else None,
                            "options": dict(segment_options)}
        for kind, path, stem, old in jobs:  # skipped without a task: report them first
            if kind == "skip":
                row = dict(old, _carried=True) if old else _skipped_row(path, stem, out)
                finish(row, int(old.get("attempts") or 1) if old else 0)
        todo = [(stem, old) for kind, _, stem, old in jobs if kind == "run"]
        if client is None and distributed is not None and workers is not None:
            t0 = time.perf_counter()
            client, own_client = local_cluster_client(workers, threads=threads, memory_limit=memory_limit), True
            report.startup_s = time.perf_counter() - t0
            for job in job_of.values():  # our cluster: cores // workers each, explicitly
                job["threads"] = job["threads"] or max(1, (os.cpu_count() or 1) // workers)
        if client is None:
            t_run = time.perf_counter()
            if todo and loaded is None:
                loaded = cached_model(model_file)
            for stem, old in todo:
                try:
                    row = run_subject(job_of[stem], loaded)
                except Exception as exc:  # noqa: BLE001 - not the input's usual errors (a bug, memory): the rest go on
                    row = _crash_row(job_of[stem], f"{type(exc).__name__}: {exc}")
                    row["status"] = "failed"
                finish(_merge_old(row, old), 1)
            report.run_s = time.perf_counter() - t_run
        else:
            report.mode = "dask"
            report.workers = len(client.nthreads()) or (workers or 0)
            for job in job_of.values():
                job["options"]["progress"] = False  # no progress bars from workers
            t_run = time.perf_counter()
            _run_on_dask(distributed, client, todo, job_of, retries, finish,
                         wait_for_workers_s=120.0 if own_client and executor is None else None)
            report.run_s = time.perf_counter() - t_run
    finally:
        if table is not None:
            table.close()
        if own_client and client is not None:
            cluster = getattr(client, "cluster", None) if workers is not None and executor is None else None
            client.close()
            if cluster is not None:
                cluster.close()
    report.rows = [final[s] for s in stems if s in final]
    report.seconds = time.perf_counter() - t_start
    if volumes:
        from ._atomic import atomic_text

        vol_rows = [r for row in report.rows if row.get("volumes") for r in volume_rows(row["subject"], row["volumes"])]
        if vol_rows:
            atomic_text(volumes, csv_text(vol_rows))
    return report


def _skipped_row(path, stem, out) -> dict:
    return {"subject": stem, "status": "skipped", "error": "", "seconds": "", "worker": "", "brain_volume_mm3": "",
            "registration_similarity": "", "peak_rss_mb": "", "input": str(path), "labels": str(labels_path(out, stem)),
            "volumes": None}


def _merge_old(row: dict, old) -> dict:
    """A skipped subject with volumes read back keeps its earlier ``ok`` row in the results table."""
    if row["status"] == "skipped" and old:
        return dict(old, volumes=row["volumes"], _carried=True, model_loads=row.get("model_loads"), pid=row.get("pid"))
    return row


def _run_on_dask(distributed, client, todo, job_of, retries, finish, *, wait_for_workers_s: float | None = None) -> None:
    """Hand each idle worker one subject at a time (so a worker that dies held only the subject it
    was running, and no subject waits behind another on a busy worker); a KilledWorker (its worker
    died: killed, out of memory) is submitted again up to `retries` times, then reported
    ``crashed``; any other exception out of a task is a ``failed`` row (not retried). With no
    worker at all it waits (a batch queue may start them late): `wait_for_workers_s` at most.
    Subjects are handed out only to workers that exist, so an adaptive cluster (``adapt()``) sees
    no backlog to grow on: give it a fixed size (``scale()``)."""
    from collections import deque

    run_id = uuid.uuid4().hex[:8]
    pending = {}  # key -> (stem, attempt, worker)
    queue = deque((stem, 1) for stem, _ in todo)
    done = distributed.as_completed()
    old_of = dict(todo)
    no_worker_since = None

    def fill() -> None:
        nonlocal no_worker_since
        live = _live_workers(client)
        busy = {w for _, _, w in pending.values()}
        free = [w for w in live if w not in busy]
        while queue and free:
            stem, attempt = queue.popleft()
            worker = free.pop(0)
            fut = client.submit(run_subject, job_of[stem], key=f"spatialseg-{stem}-{run_id}-{attempt}", pure=False,
                                workers=[worker], allow_other_workers=True, retries=0)
            pending[fut.key] = (stem, attempt, worker)
            done.add(fut)
        no_worker_since = None if live else (no_worker_since or time.monotonic())

    fill()
    last_fill = time.monotonic()
    while pending or queue:
        ready = done.next_batch(block=False) if pending else []
        if not ready:  # poll: a worker may join (a restart, a scale-up) while all others are busy
            if not _live_seen(no_worker_since, wait_for_workers_s):
                raise RuntimeError(f"no Dask worker for {wait_for_workers_s:.0f} s; {len(queue)} subjects not done "
                                   "(run the same command again with --skip-existing to do them)")
            time.sleep(0.05)
            if queue and time.monotonic() - last_fill > 1.0:
                fill()
                last_fill = time.monotonic()
            continue
        for fut in ready:
            stem, attempt, _ = pending.pop(fut.key)
            try:
                row = fut.result()
            except (distributed.KilledWorker, MemoryError) as exc:
                row = None
                if attempt <= retries:
                    queue.appendleft((stem, attempt + 1))
                else:
                    row = _crash_row(job_of[stem], f"its worker died on {attempt} attempt{'s' if attempt > 1 else ''} "
                                                   f"({type(exc).__name__}: killed, or out of memory?)")
            except Exception as exc:  # noqa: BLE001 - a task's own exception: the subject failed, the rest go on
                row = _crash_row(job_of[stem], f"{type(exc).__name__}: {exc}")
                row["status"] = "failed"
            fut.release()
            if row is not None:
                finish(_merge_old(row, old_of.get(stem)), attempt)
        fill()
        last_fill = time.monotonic()


def _live_seen(since, limit) -> bool:
    """False once there has been no worker at all for `limit` seconds (None: never)."""
    return since is None or limit is None or time.monotonic() - since <= limit


def _live_workers(client) -> list:
    """Addresses of the scheduler's running workers."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # distributed before 2025: every worker by default
        info = client.scheduler_info()
    return [addr for addr, w in info.get("workers", {}).items() if w.get("status", "running") == "running"]


def _crash_row(job: dict, error: str) -> dict:
    row = _skipped_row(job["input"], job["stem"], job["out_dir"])
    row.update(status="crashed", error=error)
    return row
