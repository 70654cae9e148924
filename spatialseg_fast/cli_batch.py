"""``spatialseg segment`` on a cohort: ``--workers``, ``--scheduler``, ``--shard``, ``--retries``,
``--results`` (spatialseg_fast.batch does the work; docs/cluster.md shows SLURM set-ups).

cli.py adds the options with ``add_batch_arguments(segment_parser)`` and hands a command that uses
any of them to ``run_cohort(args)``; without them ``spatialseg segment`` runs as before.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

OPTIONS = ("workers", "scheduler", "shard", "retries", "results")


def add_batch_arguments(parser) -> None:
    """Add the cohort options to the ``segment`` subparser."""
    g = parser.add_argument_group(
        "cohorts", "Any of these runs the inputs as a cohort (spatialseg_fast.batch): one bad scan never stops the "
        "rest, a progress line per finished subject, exit status 1 when any failed. Re-running the same command "
        "with --skip-existing redoes only the subjects without a labels file. See docs/cluster.md.")
    g.add_argument("--workers", type=int, metavar="N",
                   help="segment on a local Dask cluster of N worker processes, each loading the model once and using "
                   "cores/N threads (needs: pip install \"spatialseg_fast[cluster]\"; only N=1 works without Dask installed, "
                   "in this process)")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="segment on the workers of a running Dask scheduler (tcp://host:8786 or a scheduler file "
                   "path), e.g. one started by dask-jobqueue; workers need the inputs, OUT and the model on a shared "
                   "filesystem; each uses --threads threads (default: its own Dask thread count)")
    g.add_argument("--shard", metavar="I/N|auto",
                   help="segment only subjects I, I+N, I+2N, ... (1-based, in the order of their paths), for job arrays "
                   "without Dask; auto: from SLURM_ARRAY_TASK_ID/_COUNT or SGE_TASK_ID/_FIRST/_LAST")
    g.add_argument("--retries", type=int, metavar="K",
                   help="submit a subject again up to K times when its worker dies (killed, out of memory); default 1")
    g.add_argument("--results", metavar="CSV",
                   help="one row per subject, appended as each finishes: status, error, seconds, attempts, worker, "
                   "brain volume, registration similarity, peak memory")


def cohort_requested(args) -> bool:
    return any(getattr(args, name, None) is not None for name in OPTIONS)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s" if rest >= 60 else f"{rest}s"


def print_progress(row: dict, counts: dict) -> None:
    """One line per finished subject: what happened, then done / failed / remaining and the rate."""
    n = counts["done"] + counts["failed"] + counts["skipped"]
    tail = (f" | done {counts['done']}, failed {counts['failed']}, remaining {counts['remaining']}"
            f" | {counts['rate']:.1f} subjects/h")
    head = f"[{n}/{counts['total']}] {row['subject']}: "
    status = row["status"]
    if status == "ok":
        where = f" on {row['worker']}" if row.get("worker") else ""
        retried = f", attempt {row['attempts']}" if str(row.get("attempts", "1")) not in ("1", "") else ""
        print(f"{head}ok in {float(row['seconds'] or 0):.1f} s{where}{retried}{tail}", flush=True)
    elif status == "skipped":
        print(f"{head}labels exist, skipped{tail}", flush=True)
    else:
        print(f"{head}{'error' if status == 'failed' else 'crashed'}: {row['error']}{tail}", file=sys.stderr, flush=True)


def run_cohort(args) -> int:
    """`spatialseg segment IN... -o OUT` with the cohort options: validate, run segment_many,
    print a line per subject and a summary. 2: bad arguments; 1: some subject failed; 0: all done."""
    import os

    from spatialseg_fast import batch
    from spatialseg_fast.cli import _check_device, _inputs, _no_input_files, _writable_file, check_segment_options

    def fail(msg: str) -> int:
        print(f"spatialseg segment: error: {msg}", file=sys.stderr)
        return 2

    out = Path(args.output)
    try:
        if args.output.lower().endswith((".nii", ".nii.gz")):  # cohort outputs go to a folder
            raise ValueError(f"-o {args.output}: the cohort options (--workers, --scheduler, --shard, --retries, "
                             "--results) write into an output folder; give a folder name")
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be >= 1; got {args.workers}")
        if args.retries is not None and args.retries < 0:
            raise ValueError(f"--retries must be >= 0; got {args.retries}")
        if args.workers is not None and args.scheduler:
            raise ValueError("--workers starts a local cluster and --scheduler uses a running one: give one of them")
        if (args.workers or 0) > 1:
            batch.require_distributed(f"--workers {args.workers}")
        if args.scheduler:
            batch.require_distributed("--scheduler")
        shard = batch.parse_shard(args.shard) if args.shard else None
        inputs = _inputs(args.inputs)
        total = len(inputs)
        inputs = batch.select_shard(inputs, shard)
        if inputs and not any(p.is_file() for p in inputs):  # as the single run: nothing to do is a usage error
            raise ValueError(_no_input_files(inputs))
        probabilities, _ = check_segment_options(args, len(inputs), out)
        _check_device(args.device, args.threads)
        for option, path in (("--volumes", args.volumes), ("--results", args.results)):
            if path:
                _writable_file(path, option, will_create=out)  # OUT (and folders in it) are created below
    except ValueError as exc:
        return fail(str(exc))
    except batch.ClusterUnavailableError as exc:
        return fail(str(exc))
    try:
        out.mkdir(parents=True, exist_ok=True)
        for f in (args.qc if args.qc and args.qc.lower().endswith(".png") else None, args.volumes, args.results):
            if f:
                Path(f).resolve().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return fail(f"cannot create the output folder {out} ({exc.strerror or exc})")
    if not os.access(out, os.W_OK):
        return fail(f"the output folder {out} is not writable")
    where = (f"on the Dask scheduler at {args.scheduler}" if args.scheduler else
             f"on a local Dask cluster of {args.workers} worker{'s' if args.workers > 1 else ''}" if (args.workers or 0) > 1 or
             (args.workers == 1 and _has_distributed()) else "in this process")
    part = f" (shard {shard[0]}/{shard[1]} of {total})" if shard else ""
    print(f"spatialseg segment: {len(inputs)} subjects{part} {where}", flush=True)
    options = dict(register=not args.no_register, device=args.device, precision=args.precision,
                   skull_strip=args.skull_strip, save_mask=args.save_mask, cleanup=args.cleanup,
                   atlas_support=not args.no_atlas_support, atlas_min_prob=args.atlas_min_prob,
                   probabilities=probabilities, progress=not args.quiet and not args.workers and not args.scheduler)
    if args.mask:
        options["mask_path"] = args.mask
    t0 = time.perf_counter()
    try:
        report = batch.segment_many(inputs, out, executor=args.scheduler, workers=args.workers,
                                    retries=1 if args.retries is None else args.retries, skip_existing=args.skip_existing,
                                    model=args.model, results=args.results, volumes=args.volumes, qc=args.qc,
                                    threads=args.threads, on_subject=print_progress, **options)
    except (ValueError, FileNotFoundError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("spatialseg segment: interrupted; run the same command with --skip-existing to do the remaining "
              "subjects", file=sys.stderr)
        return 130
    ok, skipped, failed = report.count("ok"), report.count("skipped"), report.failed
    if ok or skipped:  # the viewers' colour tables, beside the labels
        from spatialseg_fast.labeltable import write_label_tables
        from spatialseg_fast.model.io import default_model_path, read_config

        write_label_tables(out, read_config(args.model or default_model_path())[0].label_table())
    print(f"spatialseg segment: {ok} segmented, {skipped} skipped, {len(failed)} failed, in "
          f"{_duration(time.perf_counter() - t0)}" + (f"; results: {args.results}" if args.results else ""), flush=True)
    if failed:
        print(f"spatialseg segment: {len(failed)} of {len(inputs)} subjects failed: {', '.join(failed)}", file=sys.stderr)
    return report.exit_code


def _has_distributed() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True
