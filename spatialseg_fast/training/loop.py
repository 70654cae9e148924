"""The paper's training recipe, in two modes over the same model.

Cross-entropy plus the auxiliary losses of BaseNet and DistBranch (paper section 3.3.1), SGD with
momentum 0.9 and an L2 penalty (weight decay), the poly learning-rate policy updated per epoch
(lr = lr0 (1 - epoch / epochs)^0.9), dropout in the fully connected layers.

- ``mode="patch"`` (the paper's): batches of `batch_size` centres drawn from the training brains,
  patches cut by the fused ``extract_patches`` with the paper's augmentation of the 2D patches
  (rotation in [-10, 10] degrees, scale in [0.9, 1.1]);
- ``mode="dense"``: whole slabs of `slab` slices through the dense form (training/dense.py),
  every brain voxel of the slab a sample, the loss averaged over them: the same network, far more
  samples per second (the trunks are shared by neighbouring voxels). No per-patch augmentation
  here: the geometric variety comes from the cohort's random deformations.

Each epoch draws its subjects, slabs/centres and dropout masks from generators seeded by (seed,
epoch), so resuming after an interruption at an epoch boundary reproduces uninterrupted training
exactly on a CPU (on a GPU closely: its backward sums in a nondeterministic order). Checkpoints
are written atomically after every epoch: ``last.safetensors`` (weights, atlas, configuration,
optimizer state, history) and ``best.safetensors`` (best validation Dice).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._progress import Progress
from ..model.io import load_extra_tensors, load_model, save_model
from ..model.network import SpatialSegNet
from ..ops import extract_patches
from .data import TrainSubject
from .dense import SlabStep


@dataclass
class TrainOptions:
    mode: str = "dense"
    epochs: int = 10
    steps_per_epoch: int = 20
    """Optimizer steps per epoch (dense: slabs; patch: batches)."""
    slab: int = 4
    """dense: slices per step."""
    batch_size: int = 256
    """patch: centres per step."""
    lr: float = 1e-3
    momentum: float = 0.9
    optimizer: str = "sgd"
    """"sgd" (the paper's, with momentum) or "adam" (scale-free steps; see docs/architecture.md)."""
    weight_decay: float = 1e-4
    """The L2 penalty's lambda."""
    poly_power: float = 0.9
    aux_weight: float = 1.0
    clip_grad: float = 2.0
    """Largest global gradient norm (0: no clipping); tames the first steps of a fresh network."""
    rotation: float = 10.0
    scale: float = 0.1
    precision: str = "fp32"
    """"fp32", or "bf16" (CPU/GPU autocast: about twice as fast on CPUs with bf16 support)."""
    seed: int = 0
    chunk: int = 8192
    """dense: voxels per head chunk (bounds the memory; dropout masks are drawn per chunk)."""
    cohort: str = "paper"
    """The default recipe's training data: "paper" (10 fixed mildly warped CAT12 subjects, the
    first shipped models') or "wide" (a stream of fresh subjects, datasets/variability.py)."""
    pool: int = 12
    """wide: subjects held at once."""
    refresh: int = 2
    """wide: subjects of the pool replaced by fresh ones at every epoch."""
    position_dropout: float = 0.0
    """dense: probability that a voxel's DistBranch / ProbBranch input is zeroed (each independently)."""
    box: int = 0
    """dense: side of a random in-plane box (voxels) that a step's samples come from; 0: the whole
    slab. The trunks only run over the box and its context, so small boxes make steps cheap: with
    one slice, the 3dBranch trunk runs over 15 slices and its backward was 87% of a whole-slice step."""
    boxes_per_step: int = 1
    """dense: boxes (each from a randomly drawn pool subject) whose gradients make one step."""
    sample_fraction: float = 1.0
    """dense: share of the slab's voxels used as samples, drawn at random; voxels where the prior
    is uncertain (atlas top probability < 0.9) are drawn 3x as often (at most all of them). Below 1
    a step costs less (the per-voxel head is ~70% of a step on a CPU), so the same time buys more,
    less correlated steps, and the samples concentrate where the image has to decide."""

    def __post_init__(self):
        if self.mode not in ("dense", "patch"):
            raise ValueError(f"mode must be 'dense' or 'patch'; got {self.mode!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam'; got {self.optimizer!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16'; got {self.precision!r}")
        if self.box < 0:
            raise ValueError(f"box must be >= 0; got {self.box}")
        for name in ("epochs", "steps_per_epoch", "slab", "batch_size", "chunk", "boxes_per_step"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive; got {self.lr}")
        if self.cohort not in ("paper", "wide"):
            raise ValueError(f"cohort must be 'paper' or 'wide'; got {self.cohort!r}")
        if not 0 <= self.position_dropout < 1:
            raise ValueError(f"position_dropout must be in [0, 1); got {self.position_dropout}")
        if not 0 < self.sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1]; got {self.sample_fraction}")
        if self.pool < 1 or not 0 <= self.refresh <= self.pool:
            raise ValueError(f"need pool >= 1 and 0 <= refresh <= pool; got pool {self.pool}, refresh {self.refresh}")


@dataclass
class EpochRecord:
    epoch: int
    lr: float
    loss: float
    samples: int
    seconds: float
    val_dice: float = math.nan

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.nan


@dataclass
class TrainResult:
    history: list = field(default_factory=list)
    best_epoch: int = -1
    best_dice: float = -math.inf


def poly_lr(options: TrainOptions, epoch: int) -> float:
    return options.lr * (1.0 - epoch / options.epochs) ** options.poly_power


def _optimizer(model: SpatialSegNet, options: TrainOptions) -> torch.optim.Optimizer:
    if options.optimizer == "adam":  # the L2 penalty as weight decay on the gradient, as with SGD
        return torch.optim.Adam(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay)


def _autocast(options: TrainOptions, device: torch.device):
    if options.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _losses(logits, aux, target, weight: float) -> torch.Tensor:
    loss = F.cross_entropy(logits.float(), target, reduction="sum")
    for a in aux.values():
        loss = loss + weight * F.cross_entropy(a.float(), target, reduction="sum")
    return loss


def _random_box(mask_p, w0: int, w1: int, side: int, rng):
    """An in-plane box (u0, u1, v0, v1) of `side` voxels around a random brain voxel of the slab."""
    nz = mask_p[w0:w1].nonzero()
    if len(nz) == 0:
        return None
    c = nz[int(rng.integers(len(nz)))]
    box = []
    for axis in (1, 2):
        n = mask_p.shape[axis]
        a = min(max(int(c[axis]) - side // 2, 0), max(n - side, 0))
        box += [a, min(a + side, n)]
    return tuple(box)


def _dense_step(model, subject: TrainSubject, atlas, options, rng, weight: float = 1.0) -> tuple[float, int]:
    mask_p = subject.mask_p
    slices = mask_p.flatten(1).any(1).nonzero().flatten()
    lo, hi = int(slices.min()), int(slices.max()) + 1
    w0 = int(rng.integers(lo, max(lo + 1, hi - options.slab + 1)))
    w1 = min(w0 + options.slab, hi)
    box = _random_box(mask_p, w0, w1, options.box, rng) if options.box else None
    if options.sample_fraction < 1:
        mask_p = _subsample(model, mask_p, w0, w1, atlas, options.sample_fraction, rng)
    gen = None
    if options.position_dropout > 0:
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    step = SlabStep(model, subject.source, mask_p, w0, w1, atlas=atlas, chunk=options.chunk, box=box,
                    position_dropout=options.position_dropout, generator=gen)
    n = len(step)
    if n == 0:
        return 0.0, 0

    def loss_fn(logits, aux, xyz):
        target = subject.target[xyz[:, 0], xyz[:, 1], xyz[:, 2]]
        return _losses(logits, aux, target, options.aux_weight) * (weight / n)

    with _autocast(options, mask_p.device):
        loss = step.run(loss_fn)
    return loss, n


def _subsample(model, mask_p, w0: int, w1: int, atlas, fraction: float, rng) -> torch.Tensor:
    """mask_p with slices w0..w1 thinned: each voxel kept with probability `fraction`, or
    min(1, 3 fraction) where the atlas's top probability is < 0.9 (the prior is uncertain)."""
    from .dense import to_array

    out = mask_p.clone()
    sub = out[w0:w1]
    nz = sub.nonzero()
    if len(nz) == 0:
        return out
    p = torch.full((len(nz),), fraction, device=nz.device)
    if atlas is not None and hasattr(atlas, "prob"):
        xyz = to_array(model, nz, w0)
        top = atlas.prob[0, xyz[:, 0], xyz[:, 1], xyz[:, 2]].float()
        p[top < 0.9] = min(1.0, 3 * fraction)
    keep = torch.from_numpy(rng.random(len(nz))).to(nz.device) < p
    sub[nz[~keep].unbind(1)] = False
    return out


def _patch_step(model, subject: TrainSubject, atlas, options, rng, weight: float = 1.0) -> tuple[float, int]:
    brain = subject.mask.nonzero()
    dev = brain.device
    pick = torch.from_numpy(rng.integers(0, len(brain), options.batch_size)).to(dev)
    centres = brain[pick]
    rotation = torch.from_numpy(rng.uniform(-options.rotation, options.rotation, options.batch_size)).float().to(dev)
    scale = torch.from_numpy(rng.uniform(1 - options.scale, 1 + options.scale, options.batch_size)).float().to(dev)
    p = extract_patches(subject.source, centres, rotation=rotation, scale=scale)
    rows = None
    if model.prob is not None:
        rows = atlas.rows(centres) if hasattr(atlas, "rows") else atlas[:, centres[:, 0], centres[:, 1], centres[:, 2]].T.float()
    target = subject.target[centres[:, 0], centres[:, 1], centres[:, 2]]
    with _autocast(options, dev):
        logits, aux = model(p.planes, p.cube, p.distances, rows, return_aux=True)
        loss = _losses(logits, aux, target, options.aux_weight) * (weight / options.batch_size)
    loss.backward()
    return float(loss.detach()), options.batch_size


def _save(path: Path, model, optimizer, atlas, options, result: TrainResult, epoch: int, metadata: dict) -> None:
    """A checkpoint; optimizer None: the weights and the record without the optimizer's state."""
    state = {} if optimizer is None else {
        f"optim.{i}.{key}": value.detach().reshape(-1) if value.ndim == 0 else value
        for i, p in enumerate(model.parameters()) for key, value in optimizer.state.get(p, {}).items()
        if isinstance(value, torch.Tensor)}
    meta = dict(metadata)
    meta["training"] = {
        "epoch": epoch,
        "options": asdict(options),
        "best_epoch": result.best_epoch,
        "best_dice": result.best_dice if math.isfinite(result.best_dice) else None,
        "history": [asdict(r) for r in result.history],
    }
    save_model(model, path, atlas=atlas, metadata=meta, extra_tensors=state)


def saved_options(out_dir) -> TrainOptions:
    """The options of the run whose checkpoints are in `out_dir` (to resume it as it was)."""
    from ..model.io import read_config

    last = Path(out_dir) / "last.safetensors"
    if not last.is_file():
        raise ValueError(f"nothing to resume: {last} does not exist")
    info = read_config(last)[1].get("training")
    if not info:
        raise ValueError(f"{last} is a model without training state: cannot resume from it")
    return TrainOptions(**info["options"])


def _restore(path: Path, model, optimizer) -> tuple[int, TrainResult]:
    saved = load_model(path)
    if saved.config != model.config:
        raise ValueError(f"{path} holds a model with another configuration; start a fresh output folder")
    info = saved.metadata.get("training")
    if not info:
        raise ValueError(f"{path} is a model without training state: cannot resume from it")
    model.load_state_dict(saved.state_dict())
    extra = load_extra_tensors(path)
    params = list(model.parameters())
    for name, value in extra.items():
        if name.startswith("optim."):
            _, i, key = name.split(".", 2)
            p = params[int(i)]  # Adam keeps its step count on the CPU, the moments beside the parameter
            optimizer.state[p][key] = value.clone().reshape(()) if key == "step" else value.to(p.device, copy=True)
    result = TrainResult(history=[EpochRecord(**r) for r in info["history"]], best_epoch=info["best_epoch"],
                         best_dice=info["best_dice"] if info["best_dice"] is not None else -math.inf)
    return int(info["epoch"]) + 1, result


class _OnDevice:
    """Training subjects moved to the training device once each (a stream's pool changes a few
    subjects per epoch; moving all of them every epoch would copy gigabytes)."""

    def __init__(self, device: torch.device):
        self.device, self._held = device, {}

    def __call__(self, pool: list) -> list:
        if self.device.type == "cpu":
            return pool
        # keyed by id() while the original is held here, so an id is never reused for another subject
        self._held = {id(s): self._held.get(id(s)) or (s, s.to(self.device)) for s in pool}
        return [self._held[id(s)][1] for s in pool]


def train(model: SpatialSegNet, subjects, out_dir, options: TrainOptions | None = None, *,
          atlas=None, validate=None, resume: bool = False, progress: bool = True, metadata: dict | None = None,
          stop_after: int | None = None, device="auto", keep_epochs: bool = False) -> TrainResult:
    """Train `model` in place on prepared `subjects` (a list of TrainSubject, or a callable
    epoch -> list, e.g. stream.SubjectPool); checkpoints in `out_dir`.

    atlas: the ProbBranch atlas (stored in the checkpoints with the model).
    validate: callable(model) -> mean validation Dice, run after every epoch (None: no validation;
        the last epoch is then also the best).
    resume: continue from ``out_dir/last.safetensors`` with the run's saved options (options=None
        takes them; different options are an error, as is a missing checkpoint or another
        configuration). stop_after: stop after this many epochs of this call (for tests and
        time-boxed runs; a later ``resume=True`` call continues).
    device: "auto" (the first CUDA GPU when there is one, else the CPU), "cpu" or "cuda[:N]". The
        model is moved there and trained there; checkpoints are written from the CPU as always, so a
        run started on one device resumes on another. The subjects' and position-dropout draws come
        from the same CPU generators on every device. "fp32" is float32 there too (no TF32).
    keep_epochs: also keep every epoch's weights as ``out_dir/epochs/epNNN.safetensors`` (for
        averaging late epochs, ``training.average``; without the optimizer's state, ~20 MB each for
        the full preset with its atlas).
    """
    from ..inference import cuda_scope, resolve_device

    dev = resolve_device(device)
    out = Path(out_dir)
    if resume:  # the run continues with its own options
        saved = saved_options(out)
        if options is not None and options != saved:
            diff = ", ".join(f"{k} {getattr(saved, k)!r} -> {getattr(options, k)!r}" for k in asdict(saved)
                             if getattr(saved, k) != getattr(options, k))
            raise ValueError(f"resuming continues the run with its saved options; these differ: {diff}")
        options = saved
    options = options or TrainOptions()
    if not callable(subjects) and not subjects:
        raise ValueError("no training subjects")
    if model.prob is not None and atlas is None:
        raise ValueError("this model has a ProbBranch: pass the atlas built from the training labels")
    out.mkdir(parents=True, exist_ok=True)
    last, best = out / "last.safetensors", out / "best.safetensors"
    model.to(dev)
    optimizer = _optimizer(model, options)
    start, result = 0, TrainResult()
    if resume:
        if not last.is_file():
            raise ValueError(f"nothing to resume: {last} does not exist")
        start, result = _restore(last, model, optimizer)
    metadata = dict(metadata or {})
    step_fn = _dense_step if options.mode == "dense" else _patch_step
    on_device = _OnDevice(dev)
    atlas_on = atlas.to(dev) if atlas is not None and dev.type != "cpu" else atlas  # `atlas` itself is saved
    done = 0
    with cuda_scope(dev, tf32=options.precision != "fp32"):  # fp32 means fp32 on a GPU too
        for epoch in range(start, options.epochs):
            if stop_after is not None and done >= stop_after:
                break
            lr = poly_lr(options, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rng = np.random.default_rng((options.seed, epoch))
            torch.manual_seed(options.seed * 1_000_003 + epoch)  # dropout masks
            model.train()
            t0, losses, samples = time.perf_counter(), [], 0
            bar = Progress(options.steps_per_epoch, f"epoch {epoch + 1}/{options.epochs}", "steps", enabled=progress)
            pool = on_device(subjects(epoch) if callable(subjects) else subjects)
            k = options.boxes_per_step
            for _ in range(options.steps_per_epoch):
                optimizer.zero_grad(set_to_none=True)
                loss, n = 0.0, 0
                for _ in range(k):  # each part from its own subject; gradients accumulate
                    subject = pool[int(rng.integers(len(pool)))]
                    part_loss, part_n = step_fn(model, subject, atlas_on, options, rng, 1.0 / k)
                    loss, n = loss + part_loss, n + part_n
                if n:
                    if options.clip_grad > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), options.clip_grad)
                    optimizer.step()
                    losses.append(loss)
                    samples += n
                bar.update(postfix=f"loss {np.mean(losses[-10:]) if losses else math.nan:.3f}  "
                                   f"{samples / max(time.perf_counter() - t0, 1e-9):,.0f} samples/s")
            bar.close()
            model.eval()
            record = EpochRecord(epoch=epoch, lr=lr, loss=float(np.mean(losses)) if losses else math.nan, samples=samples,
                                 seconds=time.perf_counter() - t0)
            record.val_dice = float(validate(model)) if validate is not None else math.nan
            result.history.append(record)
            improved = validate is None or record.val_dice > result.best_dice
            if improved:
                result.best_epoch, result.best_dice = epoch, (record.val_dice if validate is not None else result.best_dice)
            if progress:
                print(f"epoch {epoch + 1}: loss {record.loss:.4f}, {record.samples_per_second:,.0f} samples/s"
                      + (f", validation Dice {record.val_dice:.4f}" if validate is not None else "")
                      + (" (best)" if improved else ""), flush=True)
            if keep_epochs:  # before `last`: a crash between the two never leaves a gap in the kept epochs
                (out / "epochs").mkdir(exist_ok=True)
                _save(out / "epochs" / f"ep{epoch + 1:03d}.safetensors", model, None, atlas, options, result, epoch,
                      metadata)
            if improved:  # best first: a crash between the two never leaves `last` ahead of `best`
                _save(best, model, optimizer, atlas, options, result, epoch, metadata)
            _save(last, model, optimizer, atlas, options, result, epoch, metadata)
            done += 1
    return result


def history_json(result: TrainResult) -> str:
    return json.dumps([asdict(r) for r in result.history], indent=1)
