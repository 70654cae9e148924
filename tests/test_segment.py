"""Dense inference equals the per-patch classifier (the paper's way), and segment()'s contract."""
import numpy as np
import pytest
import torch

from spatialseg_fast import Volume, build_model, classify_voxels, extract_patches, segment
from spatialseg_fast.inference import DenseEngine, prepare_source
from spatialseg_fast.model import PRESETS, ModelNotFoundError
from spatialseg_fast.ops import prepare_patch_source

L = 6
SHAPE = (21, 26, 19)
SPACING = (1.1, 0.9, 1.3)


def sharpen(model, gain: float = 20.0):
    """Random weights whose logits differ clearly between voxels and classes (a fresh output
    layer is small, so its logits differ little between classes: weak label checks)."""
    with torch.no_grad():
        # zero-sum rows: no class wins everywhere through the mean of the (non-negative) fc2 output
        model.fc3.weight.sub_(model.fc3.weight.mean(1, keepdim=True)).mul_(gain)
        model.fc3.bias.zero_()
        if model.prob is not None:
            # random ProbBranch layers (a fresh model's start near the identity would let the
            # atlas decide almost every label and make the label checks weak)
            g = torch.Generator().manual_seed(0)
            for layer in model.prob.layers:
                bound = layer.weight.shape[1] ** -0.5
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=g) * 2 * bound - bound)
            model.prob.layers[-1].weight.mul_(gain)
    return model


def random_case(preset, seed=0, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    model = sharpen(build_model(preset, L, seed=seed))
    volume = torch.randn(shape, generator=g) + 2.0
    atlas = torch.rand((L, *shape), generator=g) if model.prob is not None else None
    return model, volume, atlas


def oracle_voxels(shape, n_interior=120, n_face=200, seed=0):
    """Every voxel on the volume's edges (corners included), random voxels on its faces and
    random interior voxels: patches that hang over one, two or three sides, and none."""
    idx = torch.stack(torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    on = (idx == 0) | (idx == torch.tensor(shape) - 1)
    sides = on.sum(1)
    g = torch.Generator().manual_seed(seed)
    pick = lambda sel, n: idx[sel][torch.randperm(int(sel.sum()), generator=g)[:n]]
    return torch.cat([idx[sides >= 2], pick(sides == 1, n_face), pick(sides == 0, n_interior)])


def patch_logits64(model, volume, atlas, centres, spacing, chunk: int = 64):
    """The per-patch classifier in float64 (torch reference patches, float64 weights), `chunk`
    centres at a time: the full model's float64 3D activations for every centre at once took the
    test suite's peak memory to 12.9 GB."""
    m64 = build_model(config=model.config).double()
    m64.load_state_dict(model.state_dict())
    cfg = model.config
    normalised = (volume.double() - cfg.intensity_mean) / cfg.intensity_std
    src = prepare_patch_source(normalised, cfg.patch, spacing=spacing)
    out = []
    for c in centres.split(chunk):
        p = extract_patches(src, c, backend="torch")
        rows = None if atlas is None else atlas.double()[:, c[:, 0], c[:, 1], c[:, 2]].T
        with torch.no_grad():
            out.append(m64(p.planes, p.cube, p.distances, rows))
    return torch.cat(out)


def at(volume_like, centres):
    return volume_like[..., centres[:, 0], centres[:, 1], centres[:, 2]]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_dense_equals_per_patch(preset):
    model, volume, atlas = random_case(preset)
    centres = oracle_voxels(SHAPE)
    ref64 = patch_logits64(model, volume, atlas, centres, SPACING)
    labels32, logits32 = classify_voxels(model, volume, centres, atlas, spacing=SPACING, return_logits=True)
    source = prepare_source(model, volume, SPACING)
    mask = torch.ones(SHAPE, dtype=torch.bool)
    dense_labels, _, dense_logits = DenseEngine(model, device="cpu").run(source, mask, atlas, return_logits=True)
    dense = at(dense_logits, centres).T
    # tolerance: twice the float32 per-patch classifier's own error, with a floor
    tol = 2 * float((logits32.double() - ref64).abs().max()) + 1e-5 * float(ref64.abs().max())
    assert float((dense.double() - ref64).abs().max()) <= tol
    # labels: identical wherever the float64 margin between the two best classes exceeds the tolerance
    top2 = ref64.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * tol
    assert clear.float().mean() > 0.95
    assert torch.equal(at(dense_labels, centres)[clear], ref64.argmax(1)[clear])
    assert torch.equal(labels32[clear], ref64.argmax(1)[clear])
    assert len(torch.unique(ref64.argmax(1))) >= 2  # the check is not on a constant map


def test_dense_equals_per_patch_with_other_geometry():
    """Another slicing axis, strides and patch sizes go through the same dense rules."""
    from spatialseg_fast.config import PatchConfig

    cfg = PatchConfig(slice_axis=2, patch2d=15, strides=(1, 3), patch3d=9, grid=5)
    model = sharpen(build_model("full", 4, seed=2, patch=cfg, dist_inception=(4, 4, 4), cube_trunk=(("conv", 3, 8), ("pool",), ("conv", 3, 8)),
                                scale_trunk=(("conv", 3, 8), ("pool",), ("conv", 3, 8))))
    g = torch.Generator().manual_seed(5)
    shape = (13, 17, 11)
    volume, atlas = torch.randn(shape, generator=g), torch.rand((4, *shape), generator=g)
    centres = oracle_voxels(shape, 60)
    ref64 = patch_logits64(model, volume, atlas, centres, (1.0, 2.0, 0.5))
    _, logits32 = classify_voxels(model, volume, centres, atlas, spacing=(1.0, 2.0, 0.5), return_logits=True)
    source = prepare_source(model, volume, (1.0, 2.0, 0.5))
    _, _, dense_logits = DenseEngine(model, device="cpu").run(source, volume != 0, atlas, return_logits=True)
    tol = 2 * float((logits32.double() - ref64).abs().max()) + 1e-5 * float(ref64.abs().max())
    assert float((at(dense_logits, centres).T.double() - ref64).abs().max()) <= tol


def test_dense_equals_per_patch_partial_mask_and_options():
    """A brain mask (the 2D and 3D boxes hug it, so padding reads real voxels and fill), slicing
    along axis 0, a non-zero fill, intensity normalisation, the GPU's constant-shape tiles."""
    from spatialseg_fast.config import PatchConfig

    cfg = PatchConfig(slice_axis=0, fill=-0.5)
    model = sharpen(build_model("full", 5, seed=4, patch=cfg, intensity_mean=1.5, intensity_std=2.0,
                                cube_trunk=(("conv", 3, 8), ("conv", 3, 8), ("pool",), ("conv", 3, 8))))
    g = torch.Generator().manual_seed(11)
    shape = (24, 20, 22)
    volume, atlas = torch.randn(shape, generator=g) + 3, torch.rand((5, *shape), generator=g)
    axes = [torch.arange(n) - (n - 1) / 2 for n in shape]
    r = sum((a.view([-1 if i == k else 1 for i in range(3)]) / (0.4 * n)) ** 2 for k, (a, n) in enumerate(zip(axes, shape)))
    mask = r < 1
    centres = mask.nonzero()
    centres = centres[torch.randperm(len(centres), generator=g)[:250]]
    ref64 = patch_logits64(model, volume, atlas, centres, SPACING)
    _, logits32 = classify_voxels(model, volume, centres, atlas, spacing=SPACING, return_logits=True)
    tol = 2 * float((logits32.double() - ref64).abs().max()) + 1e-5 * float(ref64.abs().max())
    source = prepare_source(model, volume, SPACING)
    for fixed in (False, True):
        engine = DenseEngine(model, slab=3)
        engine.fixed_shapes = fixed
        labels, _, logits = engine.run(source, mask, atlas, return_logits=True)
        assert float((at(logits, centres).T.double() - ref64).abs().max()) <= tol
        assert bool((labels[~mask] == 0).all())


def test_tiling_does_not_change_labels():
    model, volume, atlas = random_case("full", seed=1)
    source = prepare_source(model, volume)
    mask = torch.ones(SHAPE, dtype=torch.bool)
    runs = []
    for slab, chunk in ((None, None), (1, 97), (4, 1000), (7, 256)):
        engine = DenseEngine(model, device="cpu", slab=slab, chunk=chunk)
        runs.append(engine.run(source, mask, atlas, return_logits=True))
    gpu_mode = DenseEngine(model, device="cpu", slab=5)
    gpu_mode.fixed_shapes = True  # the GPU's constant-shape tiles, checked here on the CPU
    runs.append(gpu_mode.run(source, mask, atlas, return_logits=True))
    ref_labels, _, ref_logits = runs[0]
    scale = float(ref_logits.abs().max())
    for labels, _, logits in runs[1:]:
        assert torch.equal(labels, ref_labels)
        assert float((logits - ref_logits).abs().max()) <= 1e-5 * scale


def test_memory_budget_sets_the_tiles_and_not_the_labels():
    model, volume, atlas = random_case("basenet+dist+prob+3d", seed=4)
    source = prepare_source(model, volume)
    mask = torch.ones(SHAPE, dtype=torch.bool)
    small, big = DenseEngine(model, memory_budget=64 << 20), DenseEngine(model, memory_budget=4 << 30)
    assert all(a <= b for a, b in zip(small._plan(200, 200), big._plan(200, 200)))
    assert small._plan(200, 200) != big._plan(200, 200)
    assert torch.equal(small.run(source, mask, atlas)[0], big.run(source, mask, atlas)[0])


def test_bf16_labels_agree_with_fp32():
    model, volume, atlas = random_case("full", seed=2)
    fp32 = segment(volume, model, atlas=atlas, device="cpu")
    bf16 = segment(volume, model, atlas=atlas, device="cpu", precision="bf16")
    assert (torch.as_tensor(fp32) == torch.as_tensor(bf16)).float().mean() >= 0.99


def test_mask_bounding_box_and_background():
    model, volume, atlas = random_case("basenet+dist", seed=3)
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[3:9, 10:20, 2:5] = True
    mask[15, 3, 17] = True  # an isolated voxel far from the block: its own slab
    labels = segment(volume, model, mask=mask, device="cpu")
    full = segment(volume, model, mask=torch.ones(SHAPE, dtype=torch.bool), device="cpu")
    assert bool((labels[~mask] == 0).all())
    assert torch.equal(labels[mask], full[mask])  # cropping to the box changes nothing inside it


def test_default_mask_is_nonzero_voxels():
    model, volume, _ = random_case("basenet", seed=5)
    volume[:, :4] = 0
    labels = segment(volume.numpy(), model)
    assert isinstance(labels, np.ndarray) and labels.dtype == np.uint8 and labels.shape == SHAPE
    assert (labels[:, :4] == 0).all()


def test_types_in_and_out():
    model, volume, _ = random_case("basenet+dist", seed=6)
    as_tensor = segment(volume, model)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.uint8
    affine = np.diag([1.1, 0.9, 1.3, 1.0])
    affine[:3, 3] = [5, -3, 2]
    out = segment(Volume(volume.numpy(), affine), model)
    assert isinstance(out, Volume) and np.array_equal(out.affine, affine) and out.data.shape == SHAPE
    assert np.array_equal(out.data, segment(volume, model, spacing=(1.1, 0.9, 1.3)).numpy())  # spacing from the affine
    assert not np.array_equal(out.data, as_tensor.numpy())  # ... and it matters (DistBranch)
    many = build_model("basenet", 300, seed=0)
    assert segment(volume.numpy(), many).dtype == np.uint16


def test_probabilities_for_chosen_labels():
    model, volume, atlas = random_case("basenet+prob", seed=7)
    labels, probs = segment(volume, model, atlas=atlas, return_probabilities=[0, 3])
    assert probs.shape == (2, *SHAPE) and probs.dtype == torch.float16
    source = prepare_source(model, volume)
    _, _, logits = DenseEngine(model).run(source, volume != 0, atlas, return_logits=True)
    expected = torch.softmax(logits, 0)[[0, 3]]
    assert float((probs.float() - expected).abs().max()) < 2e-3
    with pytest.raises(ValueError, match="return_probabilities"):
        segment(volume, model, atlas=atlas, return_probabilities=[L])


def test_label_values_are_written_and_select_probabilities():
    model, volume, _ = random_case("basenet", seed=9)
    classes = segment(volume, model)
    values = (0, 4, 11, 300, 23, 30)  # codes as in an atlas protocol, one above 255
    coded = build_model(config=model.config.replace(label_values=values, label_names=tuple("abcdef")))
    coded.load_state_dict(model.state_dict())
    out, probs = segment(volume, coded, return_probabilities=[300, 4])
    assert out.dtype == torch.uint16
    assert np.array_equal(out.numpy(), np.asarray(values)[classes.numpy()])
    _, by_index = segment(volume, model, return_probabilities=[3, 1])
    assert torch.equal(probs, by_index)
    with pytest.raises(ValueError, match="label values"):
        segment(volume, coded, return_probabilities=[3])
    assert coded.config.label_table()[300] == "d"
    with pytest.raises(ValueError, match="label_values"):
        model.config.replace(label_values=(1, 2, 3, 4, 5, 6))


def test_progress_bar_on_request(capsys):
    model, volume, _ = random_case("basenet", seed=8)
    segment(volume, model)
    assert capsys.readouterr().err == ""
    segment(volume, model, progress=True)
    assert "segment [" in capsys.readouterr().err


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda v, a: dict(volume=v[None]), "3D"),
        (lambda v, a: dict(volume=v[0]), "3D"),
        (lambda v, a: dict(volume=torch.where(v > 2.5, torch.tensor(float("nan")), v)), "NaN"),
        (lambda v, a: dict(volume=torch.zeros(0, 4, 4)), "empty"),
        (lambda v, a: dict(volume=torch.zeros_like(v)), "no non-zero voxel"),
        (lambda v, a: dict(atlas=a[:, :-1]), "atlas must have shape"),
        (lambda v, a: dict(atlas=torch.where(a > 0.99, torch.tensor(-float("inf")), a).half()), "infinite"),
        (lambda v, a: dict(atlas=a[:-1]), "num_classes"),
        (lambda v, a: dict(atlas=None), "needs atlas"),
        (lambda v, a: dict(mask=torch.zeros(v.shape, dtype=torch.bool)), "mask is empty"),
        (lambda v, a: dict(mask=torch.ones(3, 3, 3)), "mask has shape"),
        (lambda v, a: dict(precision="fp8"), "precision"),
        (lambda v, a: dict(device="tpu"), "device"),
        (lambda v, a: dict(return_probabilities=[1.7]), "integer labels"),
        (lambda v, a: dict(return_probabilities=[True]), "integer labels"),
        (lambda v, a: dict(return_probabilities=[-1]), "integer labels"),
        (lambda v, a: dict(memory_budget="1G"), "memory_budget"),
        (lambda v, a: dict(threads=0), "threads"),
        (lambda v, a: dict(volume=v.numpy().astype(np.complex64)), "real|numeric"),
    ],
)
def test_bad_inputs_raise_clear_errors(make, match):
    model, volume, atlas = random_case("basenet+prob", seed=9)
    kwargs = dict(volume=volume, atlas=atlas)
    kwargs.update(make(volume, atlas))
    with pytest.raises(ValueError, match=match):
        segment(kwargs.pop("volume"), model, **kwargs)


def test_a_volume_off_the_models_own_atlas_grid_names_the_template_grid():
    model, volume, atlas = random_case("basenet+prob", seed=9)
    model.atlas = atlas  # as a model saved with its atlas holds it
    with pytest.raises(ValueError, match=r"volume has shape \(5, 6, 7\) but this model's template grid is"):
        segment(torch.rand(5, 6, 7) + 1, model)
    with pytest.raises(ValueError, match="precision must be one of auto, fp32"):  # segment() takes "auto" too
        segment(volume, model, precision="fp8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_without_cuda_is_a_clear_error():
    model, volume, _ = random_case("basenet")
    with pytest.raises(ValueError, match="CUDA is not available"):
        segment(volume, model, device="cuda")


def test_no_model_and_no_default_weights_says_what_to_do(monkeypatch):
    from spatialseg_fast.model import io

    monkeypatch.setattr(io, "default_model_path", lambda: None)
    with pytest.raises(ModelNotFoundError, match="spatialseg train"):
        segment(torch.ones(4, 4, 4))


def test_engine_run_checks_its_inputs():
    model, volume, atlas = random_case("basenet+prob", seed=12)
    source = prepare_source(model, volume)
    engine = DenseEngine(model)
    mask = torch.ones(SHAPE, dtype=torch.bool)
    with pytest.raises(ValueError, match="mask is required"):
        engine.run(source, None, atlas)
    with pytest.raises(ValueError, match="mask is empty"):
        engine.run(source, torch.zeros(SHAPE, dtype=torch.bool), atlas)
    with pytest.raises(ValueError, match="needs atlas"):
        engine.run(source, mask, None)
    other = prepare_patch_source(volume, model.config.patch.__class__(slice_axis=0))
    with pytest.raises(ValueError, match="another PatchConfig"):
        engine.run(other, mask, atlas)


def test_classify_voxels_checks_centres_first():
    model, volume, _ = random_case("basenet", seed=13)
    with pytest.raises(ValueError, match="outside the volume"):
        classify_voxels(model, volume, [[0, 0, 0]] * 600 + [[99, 0, 0]], batch_size=512)
    one = classify_voxels(model, volume, [3, 4, 5])
    assert one.shape == (1,)


def test_dense_form_does_not_copy_a_loaded_atlas():
    from spatialseg_fast.model import DenseForm

    model = build_model("basenet+prob", 4)
    model.atlas = torch.rand(4, 30, 30, 30)
    assert not hasattr(DenseForm(model).net, "atlas")
