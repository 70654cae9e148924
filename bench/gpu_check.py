"""GPU check for the dense engine, in one process: correctness on CUDA against the CPU float64
per-patch oracle, then whole-brain timings. Run through bench/gpu_check.sh on a machine with a GPU.

1. For every preset, on a small random volume: dense logits on CUDA (fp32) vs the per-patch
   classifier run in float64 on the CPU (max abs difference, label agreement where the oracle's
   margin is clear), and bf16 / fp16 dense labels vs fp32 dense labels.
2. Full preset on the 182x218x182 volume with a 1.5M-voxel brain: dense seconds per precision
   (best of 3 after a warm-up) and per-patch voxels/s on sampled voxels (Triton patch extraction),
   with the ratio.
3. The evaluator's Triton distance kernels against the C++ ones.
4. Training on CUDA (issue 14, item 4): the toy run of tests/test_training.py on the CPU and on the
   GPU (losses close; a run started on the CPU resumes on the GPU), then samples/s of the full
   preset's dense steps (whole slab of 4 slices, and the image-first recipe's 48x48x4 box with half
   its voxels) in fp32 and bf16 on the synthetic brain. A short table is printed last.
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from bench_segment import make_atlas, make_brain  # noqa: E402
from bench_training import rate, setup, synthetic_pair  # noqa: E402
from test_segment import oracle_voxels, patch_logits64, random_case  # noqa: E402

from spatialseg_fast import build_model, build_info, classify_voxels, segment  # noqa: E402
from spatialseg_fast.inference import DenseEngine, prepare_source  # noqa: E402
from spatialseg_fast.model import PRESETS  # noqa: E402


def sync():
    torch.cuda.synchronize()


def correctness(rows):
    dev = "cuda"
    shape = (21, 26, 19)
    for preset in PRESETS:
        model, volume, atlas = random_case(preset, shape=shape)
        centres = oracle_voxels(shape)
        ref64 = patch_logits64(model, volume, atlas, centres, (1.0, 1.0, 1.0))
        source = prepare_source(model, volume)
        mask = torch.ones(shape, dtype=torch.bool)
        cuda_model = model.to(dev)
        labels, _, logits = DenseEngine(cuda_model, device=dev).run(source, mask, atlas, return_logits=True)
        dense = logits[:, centres[:, 0], centres[:, 1], centres[:, 2]].T.double()
        diff = float((dense - ref64).abs().max())
        top2 = ref64.topk(2, 1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-3 * float(ref64.abs().max())
        agree = float((labels[centres[:, 0], centres[:, 1], centres[:, 2]][clear] == ref64.argmax(1)[clear]).float().mean())
        patch_labels = classify_voxels(cuda_model, source.to(dev), centres.to(dev), None if atlas is None else atlas.to(dev))
        patch_agree = float((patch_labels[clear] == ref64.argmax(1)[clear]).float().mean())
        low = {}
        for prec in ("bf16", "fp16"):
            other = DenseEngine(cuda_model, device=dev, precision=prec).run(source, mask, atlas)[0]
            low[prec] = float((other == labels).float().mean())
        rows.append((preset, diff, float(ref64.abs().max()), agree, patch_agree, low["bf16"], low["fp16"]))
        print(f"check {preset:<22} max|dense-oracle64| {diff:.2e} (logits up to {float(ref64.abs().max()):.1f}) "
              f"labels {agree:.4f} per-patch(cuda) {patch_agree:.4f} bf16 {low['bf16']:.4f} fp16 {low['fp16']:.4f}", flush=True)


def timing(rows, sampled=20000):
    dev = "cuda"
    volume, mask = make_brain()
    model = build_model("full", 135, seed=0).to(dev)
    atlas = make_atlas(135, volume.shape).to(dev)
    vol, m = volume.to(dev), mask.to(dev)
    brain = int(mask.sum())
    for prec in ("fp32", "bf16", "fp16"):
        segment(vol, model, mask=m, atlas=atlas, device=dev, precision=prec)  # warm-up (cudnn.benchmark)
        best = float("inf")
        for _ in range(3):
            sync()
            t0 = time.perf_counter()
            segment(vol, model, mask=m, atlas=atlas, device=dev, precision=prec)
            sync()
            best = min(best, time.perf_counter() - t0)
        rows.append((prec, best, brain / best, torch.cuda.max_memory_allocated() / 2**30))
        print(f"time full {prec}: {best:.2f} s, {brain / best:,.0f} voxels/s", flush=True)
    g = torch.Generator().manual_seed(1)
    centres = mask.nonzero()[torch.randperm(brain, generator=g)[:sampled]].to(dev)
    source = prepare_source(model, vol)
    classify_voxels(model, source, centres[:1024], atlas, batch_size=1024)
    sync()
    t0 = time.perf_counter()
    classify_voxels(model, source, centres, atlas, batch_size=1024)
    sync()
    return sampled / (time.perf_counter() - t0), brain


def evaluator_check(check_size: int = 128, time_size: int = 256):
    """The Triton surface-distance path against the CPU one (the torch reference here: the script
    runs without the C++ extension) on a smaller pair, then its time on the benchmark pair."""
    from bench_surface_distances import SPACING, make_pair

    from spatialseg_fast.ops import surface_distances

    pred, ref = make_pair(check_size, 40)
    cpu = surface_distances(pred, ref, spacing=SPACING)
    gpu = surface_distances(torch.from_numpy(pred).cuda(), torch.from_numpy(ref).cuda(), spacing=SPACING)
    worst = max(float(abs(a - b).max()) if len(a) else 0.0
                for a, b in zip(gpu.ref_to_pred + gpu.pred_to_ref, cpu.ref_to_pred + cpu.pred_to_ref))
    same_counts = bool((gpu.counts == cpu.counts).all())
    pred, ref = make_pair(time_size)
    p, r = torch.from_numpy(pred).cuda(), torch.from_numpy(ref).cuda()
    surface_distances(p, r, spacing=SPACING)  # warm-up
    sync()
    t0 = time.perf_counter()
    surface_distances(p, r, spacing=SPACING)
    sync()
    dt = time.perf_counter() - t0
    print(f"evaluator: {check_size}^3 check counts equal {same_counts}, max |triton - cpu| {worst:.1e}; "
          f"{time_size}^3 x 134 labels on the GPU {dt:.3f} s")
    return dt, worst, same_counts


def training_check(steps: int = 3):
    import tempfile

    import numpy as np
    from test_training import toy_data, toy_model

    from spatialseg_fast.training.loop import TrainOptions, train

    options = TrainOptions(epochs=2, steps_per_epoch=3, slab=3, box=8, lr=1e-3, optimizer="adam", position_dropout=0.3)
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dev in ("cpu", "cuda"):
            model = toy_model()
            subjects, atlas = toy_data(model)
            losses[dev] = [r.loss for r in train(model, subjects, f"{tmp}/{dev}", options, atlas=atlas, progress=False,
                                                 device=dev).history]
        model = toy_model()
        train(model, subjects, f"{tmp}/mixed", options, atlas=atlas, progress=False, device="cpu", stop_after=1)
        resumed = train(model, subjects, f"{tmp}/mixed", None, atlas=atlas, progress=False, resume=True, device="cuda")
    print(f"training toy run: losses cpu {np.round(losses['cpu'], 4).tolist()} cuda {np.round(losses['cuda'], 4).tolist()}; "
          f"resumed cpu -> cuda: epochs {[r.epoch for r in resumed.history]}", flush=True)
    image, labels = synthetic_pair()
    model, subject, atlas = setup(image, labels, tuple(range(135)))
    model, subject, atlas = model.to("cuda"), subject.to("cuda"), atlas.to("cuda")
    rows = []
    for prec in ("fp32", "bf16"):
        for name, extra in (("slab 4", {}), ("box 48x48x4, half", dict(box=48, sample_fraction=0.5))):
            opts = TrainOptions(slab=4, precision=prec, optimizer="adam", position_dropout=0.7, **extra)
            r = rate(model, subject, atlas, opts, steps)
            print(f"training step {prec} {name}: {r:,.0f} samples/s", flush=True)
            rows.append((prec, name, r))
    return losses, rows


def main():
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here")
    info = build_info()
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__} triton {info['triton']} extension {info['extension']}")
    checks, times = [], []
    correctness(checks)
    patch_rate, brain = timing(times)
    ev_time, ev_diff, ev_counts = evaluator_check()
    try:  # a failure here must not cost the summary of the checks above
        losses, train_rows = training_check()
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        print(f"training check FAILED: {type(exc).__name__}: {exc}", flush=True)
        losses, train_rows = None, []
    print("\n== gpu_check summary ==")
    print(f"{'preset':<22} {'max|d|':>9} {'labels':>7} {'patch':>7} {'bf16':>7} {'fp16':>7}")
    for preset, diff, scale, agree, patch, b, h in checks:
        print(f"{preset:<22} {diff:>9.1e} {agree:>7.4f} {patch:>7.4f} {b:>7.4f} {h:>7.4f}")
    print(f"\nfull preset, 182x218x182, brain {brain:,} voxels (ellipsoid), per-patch {patch_rate:,.0f} voxels/s")
    print(f"{'precision':<9} {'dense s':>8} {'voxels/s':>12} {'peak GiB':>9} {'dense/patch':>12}")
    for prec, sec, rate, mem in times:
        print(f"{prec:<9} {sec:>8.2f} {rate:>12,.0f} {mem:>9.2f} {rate / patch_rate:>11.0f}x")
    print(f"\nevaluator (surface_distances, triton): {ev_time:.3f} s, counts equal {ev_counts}, max |triton - cpp| {ev_diff:.1e}")
    if losses:
        print(f"\ntraining toy losses cpu {losses['cpu'][-1]:.4f} cuda {losses['cuda'][-1]:.4f} (last epoch)")
    for prec, name, r in train_rows:
        print(f"training {prec:<5} {name:<18} {r:>12,.0f} samples/s")


if __name__ == "__main__":
    main()
