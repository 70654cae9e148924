"""Training: the dense-mode forward equals the patch form, steps reduce the loss, resume reproduces
uninterrupted training, checkpoints are complete and broken ones give clear errors."""
import functools

import numpy as np
import pytest
import torch

from spatialseg_fast import build_model, load_model
from spatialseg_fast.datasets.atlas import build_atlas
from spatialseg_fast.inference import prepare_source
from spatialseg_fast.training.data import class_indices, prepare_subject
from spatialseg_fast.training.dense import SlabStep
from spatialseg_fast.training.loop import TrainOptions, poly_lr
from spatialseg_fast.training.loop import train as train_on

# the CPU unless a test says otherwise: resuming is bitwise exact there (a GPU's backward sums in
# a nondeterministic order), and the tests compare with CPU tensors
train = functools.partial(train_on, device="cpu")
from spatialseg_fast.training.validation import slab_dice

from test_segment import SPACING, patch_logits64, random_case

VALUES = (0, 3, 8, 9)


def toy_pair(seed, shape=(18, 20, 16)):
    """A brain-like blob with 3 labelled regions whose intensities differ (learnable)."""
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    c = (np.array(shape) - 1) / 2 + rng.normal(0, 0.5, 3)
    r = (((idx - c) / (np.array(shape) * 0.4)) ** 2).sum(-1)
    labels = np.select([r < 0.25, r < 0.6, r < 1], [3, 8, 9], 0).astype(np.uint8)
    image = np.select([labels == 3, labels == 8, labels == 9], [1.0, 2.0, 3.0], 0.0)
    image = (image + rng.normal(0, 0.1, shape) * (labels > 0)).astype(np.float32)
    return image, labels


def toy_model(preset="full", seed=0):
    return build_model(preset, len(VALUES), seed=seed, label_values=VALUES, intensity_reference="brain_median")


def toy_data(model, n=2):
    pairs = [toy_pair(s) for s in range(n)]
    subjects = [prepare_subject(model, img, lab, name=f"s{i}") for i, (img, lab) in enumerate(pairs)]
    atlas = build_atlas([lab for _, lab in pairs], VALUES) if model.prob is not None else None
    return subjects, atlas


@pytest.mark.parametrize("preset", ["basenet", "full"])
def test_dense_training_forward_equals_the_patch_form(preset):
    model, volume, atlas = random_case(preset, seed=1)
    source = prepare_source(model, volume, spacing=SPACING)
    p = model.config.patch
    mask_p = (volume != 0).permute((p.slice_axis, *p.in_plane_axes))
    step = SlabStep(model, source, mask_p, 3, 7, atlas=atlas, chunk=97)  # chunks that do not divide the slab
    got = step.logits()
    pick = torch.randperm(len(step), generator=torch.Generator().manual_seed(0))[:40]
    want = patch_logits64(model, volume, atlas, step.xyz[pick], SPACING)
    scale = float(want.abs().max())
    assert float((got[pick].double() - want).abs().max()) < 1e-5 * max(scale, 1.0)


def test_chunked_backward_gives_the_unchunked_gradients():
    model = toy_model()
    subjects, atlas = toy_data(model, 1)
    s = subjects[0]
    grads = []
    for chunk in (50, 100000):
        model.zero_grad()
        torch.manual_seed(0)
        model.eval()  # no dropout: the same function either way
        step = SlabStep(model, s.source, s.mask_p, 6, 10, atlas=atlas, chunk=chunk)
        step.run(lambda logits, aux, xyz: torch.nn.functional.cross_entropy(
            logits, s.target[xyz[:, 0], xyz[:, 1], xyz[:, 2]], reduction="sum"))
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()])
    # float32 sums in another order: equal up to rounding, which cancellation can lift to ~1.4e-3
    # of a tensor's largest entry; dropping one of the 11 chunks moves every tensor by >= 8.8%
    for a, b in zip(*grads):
        assert float((a - b).abs().max()) <= 1e-2 * float(b.abs().max()) + 1e-7


@pytest.mark.parametrize("mode", ["dense", "patch"])
def test_a_few_epochs_reduce_the_loss(mode, tmp_path):
    model = toy_model("basenet+dist+prob" if mode == "patch" else "full")
    subjects, atlas = toy_data(model)
    options = TrainOptions(mode=mode, epochs=4, steps_per_epoch=4, slab=3, batch_size=32, lr=0.02, seed=1)
    result = train(model, subjects, tmp_path, options, atlas=atlas, progress=False)
    losses = [r.loss for r in result.history]
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    assert (tmp_path / "last.safetensors").is_file() and (tmp_path / "best.safetensors").is_file()


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.02), ("adam", 1e-3)])
def test_resume_reproduces_uninterrupted_training(tmp_path, optimizer, lr):
    options = TrainOptions(epochs=3, steps_per_epoch=2, slab=3, lr=lr, seed=2, optimizer=optimizer)
    full = toy_model()
    subjects, atlas = toy_data(full)
    train(full, subjects, tmp_path / "a", options, atlas=atlas, progress=False)
    part = toy_model()
    train(part, subjects, tmp_path / "b", options, atlas=atlas, progress=False, stop_after=1)
    resumed = toy_model(seed=5)  # other initial weights: everything must come from the checkpoint
    result = train(resumed, subjects, tmp_path / "b", options, atlas=atlas, progress=False, resume=True)
    assert [r.epoch for r in result.history] == [0, 1, 2]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    saved = load_model(tmp_path / "b" / "last.safetensors")
    assert saved.metadata["training"]["epoch"] == 2 and saved.config.label_values == VALUES
    assert torch.equal(saved.atlas.index, atlas.index)


def test_validation_picks_the_best_epoch(tmp_path):
    model = toy_model()
    subjects, atlas = toy_data(model)
    dice = iter([0.5, 0.7, 0.6])
    options = TrainOptions(epochs=3, steps_per_epoch=1, slab=2, lr=0.01)
    result = train(model, subjects, tmp_path, options, atlas=atlas, progress=False, validate=lambda m: next(dice))
    assert result.best_epoch == 1 and result.best_dice == 0.7
    assert load_model(tmp_path / "best.safetensors").metadata["training"]["epoch"] == 1
    d = slab_dice(model, subjects, atlas, slabs=2)
    assert 0.0 <= d <= 1.0


def test_broken_checkpoints_and_bad_options_give_clear_errors(tmp_path):
    model = toy_model()
    subjects, atlas = toy_data(model, 1)
    options = TrainOptions(epochs=2, steps_per_epoch=1, slab=2)
    with pytest.raises(ValueError, match="nothing to resume"):
        train(model, subjects, tmp_path, options, atlas=atlas, progress=False, resume=True)
    train(model, subjects, tmp_path, options, atlas=atlas, progress=False, stop_after=1)
    last = tmp_path / "last.safetensors"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="not a readable spatialseg_fast model"):
        train(model, subjects, tmp_path, options, atlas=atlas, progress=False, resume=True)
    last.write_bytes(b"\x00" * 64)  # garbage
    with pytest.raises(ValueError, match="model"):
        load_model(last)
    with pytest.raises(ValueError, match="atlas"):
        train(model, subjects, tmp_path / "x", options, progress=False)
    for bad in (dict(mode="sgd"), dict(epochs=0), dict(precision="fp8"), dict(lr=0)):
        with pytest.raises(ValueError):
            TrainOptions(**bad)


def test_poly_schedule_and_label_mapping():
    o = TrainOptions(lr=0.1, epochs=10)
    assert poly_lr(o, 0) == 0.1 and poly_lr(o, 5) == pytest.approx(0.1 * 0.5**0.9)
    assert class_indices(np.array([[0, 9], [3, 8]]), VALUES).tolist() == [[0, 3], [1, 2]]
    with pytest.raises(ValueError, match="outside the model's label table"):
        class_indices(np.array([4]), VALUES)


def test_resume_keeps_the_runs_options(tmp_path):
    model = toy_model()
    subjects, atlas = toy_data(model, 1)
    options = TrainOptions(epochs=3, steps_per_epoch=1, slab=2, lr=0.01)
    train(model, subjects, tmp_path, options, atlas=atlas, progress=False, stop_after=1)
    with pytest.raises(ValueError, match="lr 0.01 -> 0.5"):
        train(model, subjects, tmp_path, TrainOptions(epochs=3, steps_per_epoch=1, slab=2, lr=0.5), atlas=atlas,
              progress=False, resume=True)
    result = train(model, subjects, tmp_path, None, atlas=atlas, progress=False, resume=True)  # its own options
    assert [r.epoch for r in result.history] == [0, 1, 2] and result.history[1].lr == pytest.approx(0.01 * (2 / 3) ** 0.9)


def test_position_dropout_zeroes_the_position_inputs_of_some_voxels():
    model = toy_model()
    subjects, atlas = toy_data(model, 1)
    s = subjects[0]
    plain = SlabStep(model, s.source, s.mask_p, 4, 8, atlas=atlas)
    dropped = SlabStep(model, s.source, s.mask_p, 4, 8, atlas=atlas, position_dropout=0.5,
                       generator=torch.Generator().manual_seed(0))
    _, d0, r0 = plain._inputs(0, len(plain))
    _, d1, r1 = dropped._inputs(0, len(dropped))
    zero_d = (d1.flatten(1) == 0).all(1)
    zero_r = (r1 == 0).all(1)
    assert 0.3 < float(zero_d.float().mean()) < 0.7 and 0.3 < float(zero_r.float().mean()) < 0.7
    assert not torch.equal(zero_d, zero_r)  # independent per branch
    assert torch.equal(d1[~zero_d], d0[~zero_d]) and torch.equal(r1[~zero_r], r0[~zero_r])


def test_sample_fraction_thins_confident_voxels_more():
    from spatialseg_fast.training.dense import to_array
    from spatialseg_fast.training.loop import _subsample

    model = toy_model()
    subjects, atlas = toy_data(model, 3)
    s = subjects[0]
    rng = np.random.default_rng(0)
    lo, hi = 2, 16
    full = s.mask_p[lo:hi].nonzero()
    thin = _subsample(model, s.mask_p, lo, hi, atlas, 0.2, rng)
    assert torch.equal(thin[:lo], s.mask_p[:lo]) and not (thin & ~s.mask_p).any()
    kept = thin[lo:hi].nonzero()
    xyz_all, xyz_kept = to_array(model, full, lo), to_array(model, kept, lo)
    top_all = atlas.prob[0][tuple(xyz_all.T)].float()
    top_kept = atlas.prob[0][tuple(xyz_kept.T)].float()
    rate_unsure = (top_kept < 0.9).sum() / max(int((top_all < 0.9).sum()), 1)
    rate_sure = (top_kept >= 0.9).sum() / max(int((top_all >= 0.9).sum()), 1)
    assert 0.1 < float(rate_sure) < 0.3 and float(rate_unsure) > 0.45
    assert torch.equal(_subsample(model, s.mask_p, lo, hi, atlas, 1.0, rng), s.mask_p)


def test_resume_is_exact_with_a_stream_and_the_new_options(tmp_path):
    options = TrainOptions(epochs=3, steps_per_epoch=2, slab=3, lr=1e-3, seed=1, optimizer="adam",
                           position_dropout=0.4, sample_fraction=0.5)
    pairs = [toy_pair(s) for s in range(5)]

    def stream_for(model):
        made = {}

        def pool(epoch):  # 2 subjects, one replaced per epoch
            idx = [epoch, epoch + 1]
            return [made.setdefault(i, prepare_subject(model, *pairs[i], name=str(i))) for i in idx]
        return pool

    full = toy_model()
    atlas = build_atlas([lab for _, lab in pairs], VALUES)
    train(full, stream_for(full), tmp_path / "a", options, atlas=atlas, progress=False)
    part = toy_model()
    train(part, stream_for(part), tmp_path / "b", options, atlas=atlas, progress=False, stop_after=2)
    resumed = toy_model(seed=4)
    train(resumed, stream_for(resumed), tmp_path / "b", None, atlas=atlas, progress=False, resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("bad, match", [(dict(cohort="big"), "cohort"), (dict(position_dropout=1.0), "position_dropout"),
                                        (dict(sample_fraction=0.0), "sample_fraction"), (dict(pool=2, refresh=3), "refresh")])
def test_new_options_are_checked(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainOptions(**bad)


def test_box_steps_sample_only_inside_a_box_and_accumulate_parts(tmp_path):
    from spatialseg_fast.training.loop import _random_box

    model = toy_model()
    subjects, atlas = toy_data(model, 2)
    s = subjects[0]
    rng = np.random.default_rng(0)
    for _ in range(5):
        box = _random_box(s.mask_p, 3, 6, 8, rng)
        u0, u1, v0, v1 = box
        assert u1 - u0 == 8 and v1 - v0 == 8 and 0 <= u0 and u1 <= s.mask_p.shape[1]
        step = SlabStep(model, s.source, s.mask_p, 3, 6, atlas=atlas, box=box)
        assert len(step) > 0
        assert ((step.nz[:, 1] >= u0) & (step.nz[:, 1] < u1) & (step.nz[:, 2] >= v0) & (step.nz[:, 2] < v1)).all()
    # a step of two boxes from drawn subjects trains and resumes exactly like any other
    options = TrainOptions(epochs=2, steps_per_epoch=2, slab=3, box=8, boxes_per_step=2, lr=1e-3, optimizer="adam")
    a, b = toy_model(), toy_model()
    train(a, subjects, tmp_path / "a", options, atlas=atlas, progress=False)
    train(b, subjects, tmp_path / "b", options, atlas=atlas, progress=False, stop_after=1, keep_epochs=True)
    train(b, subjects, tmp_path / "b", None, atlas=atlas, progress=False, resume=True, keep_epochs=True)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    # every epoch kept (the second written by the resumed call), each the weights after that epoch
    kept = sorted(p.name for p in (tmp_path / "b" / "epochs").iterdir())
    assert kept == ["ep001.safetensors", "ep002.safetensors"] and not (tmp_path / "a" / "epochs").exists()
    second = load_model(tmp_path / "b" / "epochs" / "ep002.safetensors")
    assert second.metadata["training"]["epoch"] == 1
    for (name, x), y in zip(b.state_dict().items(), second.state_dict().values()):
        assert torch.equal(x, y), name
    first = load_model(tmp_path / "b" / "epochs" / "ep001.safetensors")
    assert not all(torch.equal(x, y) for x, y in zip(first.state_dict().values(), second.state_dict().values()))
    with pytest.raises(ValueError, match="boxes_per_step"):
        TrainOptions(boxes_per_step=0)


def test_init_starts_from_another_models_weights(tmp_path):
    from spatialseg_fast import save_model
    from spatialseg_fast.training.recipe import _init_from

    source = toy_model(seed=3)
    save_model(source, tmp_path / "m.safetensors")
    model = toy_model(seed=0)
    _init_from(model, tmp_path / "m.safetensors")
    for (name, x), y in zip(source.state_dict().items(), model.state_dict().values()):
        assert torch.equal(x, y), name
    other = build_model("basenet", len(VALUES), seed=0, label_values=VALUES, intensity_reference="brain_median")
    with pytest.raises(ValueError, match="another configuration"):
        _init_from(other, tmp_path / "m.safetensors")


def test_average_checkpoints_is_the_mean_of_the_weights(tmp_path):
    from spatialseg_fast import save_model
    from spatialseg_fast.modelcard import card
    from spatialseg_fast.training.average import average_checkpoints

    _, labels = toy_pair(0)
    atlas = build_atlas([labels], VALUES)
    paths = []
    for seed in range(3):
        m = build_model("basenet+dist+prob", len(VALUES), seed=seed, label_values=VALUES)
        paths.append(save_model(m, tmp_path / f"ep{seed}.safetensors", atlas=atlas,
                                metadata={"data": "toy", "training": {"epoch": seed, "options": {}, "history": []}}))
    out = average_checkpoints(paths, tmp_path / "avg.safetensors")
    avg = load_model(out)
    models = [load_model(p) for p in paths]
    for name, value in avg.state_dict().items():
        expected = sum(m.state_dict()[name].double() for m in models) / 3
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)
    assert avg.metadata["data"] == "toy" and avg.metadata["training"]["epoch"] == 2
    assert torch.equal(avg.atlas.index, models[-1].atlas.index)
    assert "3 checkpoints (ep0.safetensors, ep1.safetensors, ep2.safetensors)" in card(out)["averaged"]
    other = save_model(build_model("basenet", len(VALUES), seed=0, label_values=VALUES), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="another configuration"):
        average_checkpoints([other, paths[0]], tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints(paths[:1], tmp_path / "bad.safetensors")
    other_atlas = build_atlas([toy_pair(1)[1]], VALUES)
    stray = save_model(build_model("basenet+dist+prob", len(VALUES), seed=5, label_values=VALUES),
                       tmp_path / "stray.safetensors", atlas=other_atlas)
    with pytest.raises(ValueError, match="another atlas"):
        average_checkpoints([stray, paths[0]], tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="one of the inputs"):
        average_checkpoints(paths, paths[0])


def test_card_of_a_shipped_average_shows_its_own_validation_and_a_short_checkpoint_list(tmp_path):
    from spatialseg_fast import save_model
    from spatialseg_fast.modelcard import card

    training = {"epoch": 9, "best_dice": 0.47, "best_epoch": 9, "options": {"steps_per_epoch": 2}, "history": [{}] * 10}
    meta = {"training": training, "averaged_from": [f"ep{e:02d}.safetensors" for e in range(3, 10)]}
    path = save_model(build_model("basenet", len(VALUES), seed=0, label_values=VALUES), tmp_path / "m.safetensors",
                      metadata=meta)
    fields = card(path)
    assert fields["averaged"] == "the mean of the weights of 7 checkpoints (ep03.safetensors ... ep09.safetensors)"
    assert fields["validation"] == "the run's best single epoch: best slab Dice 0.470 (epoch 10)"
    meta["card"] = {"validation": "the mean: slab Dice 0.588"}
    path = save_model(build_model("basenet", len(VALUES), seed=0, label_values=VALUES), tmp_path / "m.safetensors",
                      metadata=meta)
    assert card(path)["validation"] == "the mean: slab Dice 0.588"


def test_subjects_and_atlas_move_to_the_training_device_once():
    """The GPU path's bookkeeping, checked on torch's "meta" device (no data, no GPU needed):
    every tensor a step reads is moved, and a stream's subjects are moved once each."""
    from spatialseg_fast.training.loop import _OnDevice

    model = toy_model()
    subjects, atlas = toy_data(model, 3)
    meta = torch.device("meta")
    moved = atlas.to(meta)
    assert moved.index.is_meta and moved.prob.is_meta and moved.num_classes == atlas.num_classes
    assert not atlas.index.is_meta  # the original (the one checkpoints store) stays on the CPU
    on = _OnDevice(meta)
    first = on(subjects[:2])
    s = first[0]
    assert all(t.is_meta for t in (s.mask, s.target, s.source.volume, s.source.scales)) and s.name == "s0"
    assert s.mask.shape == subjects[0].mask.shape and s.source.spacing == subjects[0].source.spacing
    again = on(subjects[1:3])  # subject 1 stays in the pool: the same moved copy, not a new one
    assert again[0] is first[1] and again[1] is not first[1]
    assert on(subjects[1:3])[1] is again[1]
    cpu = _OnDevice(torch.device("cpu"))
    assert cpu(subjects)[0] is subjects[0]  # nothing copied on the CPU


def test_a_missing_or_unknown_training_device_is_a_clear_error(tmp_path):
    model = toy_model()
    subjects, atlas = toy_data(model, 1)
    options = TrainOptions(epochs=1, steps_per_epoch=1, slab=2)
    with pytest.raises(ValueError, match="device must be"):
        train(model, subjects, tmp_path, options, atlas=atlas, progress=False, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            train(model, subjects, tmp_path, options, atlas=atlas, progress=False, device="cuda")
    assert not (tmp_path / "last.safetensors").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["dense", "patch"])
def test_training_on_a_gpu_follows_the_cpu_run_and_resumes_across_devices(mode, tmp_path):
    options = TrainOptions(mode=mode, epochs=2, steps_per_epoch=2, slab=3, batch_size=32, lr=1e-3, optimizer="adam",
                           box=8 if mode == "dense" else 0, position_dropout=0.3 if mode == "dense" else 0.0)
    cpu, gpu, mixed = toy_model(), toy_model(), toy_model()
    subjects, atlas = toy_data(cpu)
    a = train(cpu, subjects, tmp_path / "cpu", options, atlas=atlas, progress=False, device="cpu")
    b = train(gpu, subjects, tmp_path / "gpu", options, atlas=atlas, progress=False, device="cuda")
    # the head's dropout masks come from each device's own generator: close, not equal
    assert np.allclose([r.loss for r in a.history], [r.loss for r in b.history], rtol=0.2)
    assert next(gpu.parameters()).is_cuda and load_model(tmp_path / "gpu" / "last.safetensors").atlas is not None
    train(mixed, subjects, tmp_path / "mixed", options, atlas=atlas, progress=False, device="cpu", stop_after=1)
    c = train(mixed, subjects, tmp_path / "mixed", None, atlas=atlas, progress=False, resume=True, device="cuda")
    assert [r.epoch for r in c.history] == [0, 1] and np.isfinite(c.history[-1].loss)
    # stopped and resumed on the GPU: the uninterrupted GPU run's weights, up to the order of sums
    again = toy_model()
    train(again, subjects, tmp_path / "again", options, atlas=atlas, progress=False, device="cuda", stop_after=1)
    train(again, subjects, tmp_path / "again", None, atlas=atlas, progress=False, resume=True, device="cuda")
    for (name, x), y in zip(gpu.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-4, msg=name)


def test_train_command_rejects_a_bad_device_before_any_work(tmp_path, capsys):
    from spatialseg_fast.cli import main

    assert main(["train", str(tmp_path / "run"), "--device", "tpu", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "device must be 'auto', 'cpu' or 'cuda[:N]'" in err[0]
    if not torch.cuda.is_available():
        assert main(["train", str(tmp_path / "run"), "--device", "cuda", "--quiet"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing made, no data prepared
