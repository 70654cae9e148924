"""The network: Table 1 parameter counts, the patch form's contract, model files."""
import json

import pytest
import torch

from spatialseg_fast import ModelConfig, build_model, load_model, save_model
from spatialseg_fast.model import PAPER_PARAMS, PRESETS, preset_config


def test_parameter_counts_match_table1(capsys):
    """Each preset within 10% of the paper's N_param for 135 classes; the table is printed."""
    rows = []
    for preset, paper in PAPER_PARAMS.items():
        ours = build_model(preset, 135).inference_parameters()
        rows.append((preset, ours, paper, (ours - paper) / paper))
    with capsys.disabled():
        print("\npreset                       ours      Table 1    diff")
        for preset, ours, paper, diff in rows:
            print(f"{preset:<24} {ours:>9,d} {paper:>12,d} {100 * diff:+6.1f}%")
    for preset, ours, paper, diff in rows:
        assert abs(diff) <= 0.10, f"{preset}: {ours} parameters vs {paper} in Table 1"


@pytest.mark.parametrize("num_classes", [135, 7])
def test_prob_branch_adds_exactly_3_l_squared(num_classes):
    for without, with_prob in (("basenet", "basenet+prob"), ("basenet+dist", "basenet+dist+prob")):
        a = build_model(without, num_classes).inference_parameters()
        b = build_model(with_prob, num_classes).inference_parameters()
        assert b - a == 3 * num_classes**2
    prob = build_model("basenet+prob", num_classes).prob
    assert all(layer.bias is None for layer in prob.layers)


def test_full_is_an_alias_and_presets_have_their_branches():
    assert build_model("full", 5).config == build_model("basenet+dist+prob+3d", 5).config
    for preset, flags in PRESETS.items():
        m = build_model(preset, 5)
        assert (m.dist is not None, m.prob is not None, m.cube is not None) == (flags["dist"], flags["prob"], flags["cube"])


def test_auxiliary_heads_are_training_only_and_not_counted():
    m = build_model("basenet+dist", 9, seed=0)
    aux = sum(p.numel() for p in (*m.aux_base.parameters(), *m.aux_dist.parameters()))
    assert sum(p.numel() for p in m.parameters()) - m.inference_parameters() == aux
    n = 4
    planes, dist = torch.randn(n, 3, 25, 25), torch.rand(n, 7, 7, 7) * 100
    logits, extra = m.train()(planes, distances=dist, return_aux=True)
    assert logits.shape == (n, 9) and set(extra) == {"base", "dist"} and extra["dist"].shape == (n, 9)


def test_dropout_only_in_training():
    m = build_model("basenet", 4, seed=0)
    x = torch.randn(8, 3, 25, 25)
    assert torch.equal(m.eval()(x), m(x))
    m.train()
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    assert not torch.equal(a, m(x))


@pytest.mark.parametrize("shape, dtype", [((4097, 33), torch.float32), ((3, 5, 7), torch.float32), ((1000, 40), torch.bfloat16)])
def test_half_dropout_is_dropout_one_half(shape, dtype):
    """The bit-mask dropout keeps each element with probability 1/2, independently, doubled, and
    passes the gradient through the same mask; torch's seed makes it reproducible."""
    from spatialseg_fast.model.network import _HalfDropout

    x = (torch.rand(shape) + 0.5).to(dtype).requires_grad_()
    torch.manual_seed(3)
    y = _HalfDropout.apply(x)
    kept = y != 0
    assert torch.equal(y[kept], 2 * x[kept]) and y.dtype == dtype and y.shape == x.shape
    n = x.numel()
    share = kept.float().mean().item()
    assert abs(share - 0.5) < 5 * (0.25 / n) ** 0.5  # within 5 sd of a Binomial(n, 1/2)
    if n > 10_000:  # no pattern between neighbouring elements (bits of one integer)
        flat = kept.flatten().float()
        both = (flat[1:] * flat[:-1]).mean().item()
        assert abs(both - 0.25) < 5 * (0.1875 / n) ** 0.5
        assert abs(kept[:, 0].float().mean().item() - 0.5) < 5 * (0.25 / shape[0]) ** 0.5  # per column too
    g = torch.randn(shape).to(dtype)
    y.backward(g)
    assert torch.equal(x.grad, g * kept.to(dtype) * 2)
    torch.manual_seed(3)
    assert torch.equal(_HalfDropout.apply(x.detach()), y.detach())
    assert not torch.equal(_HalfDropout.apply(x.detach()), y.detach())


def test_the_network_uses_half_dropout_only_for_p_one_half(monkeypatch):
    from spatialseg_fast.model import network

    calls = []
    real = network._HalfDropout.apply
    monkeypatch.setattr(network._HalfDropout, "apply", lambda x: calls.append(1) or real(x))
    x = torch.randn(8, 3, 25, 25)
    build_model("basenet", 4, seed=0).train()(x)
    assert len(calls) == 2  # after fc1 and fc2
    build_model("basenet", 4, seed=0, dropout=0.3).train()(x)
    build_model("basenet", 4, seed=0).eval()(x)
    assert len(calls) == 2


def test_missing_branch_inputs_raise():
    m = build_model("full", 4)
    x = torch.randn(2, 3, 25, 25)
    with pytest.raises(ValueError, match="3D patches"):
        m(x, distances=torch.rand(2, 7, 7, 7), atlas=torch.rand(2, 4))
    with pytest.raises(ValueError, match="landmark distances"):
        m(x, cube=torch.randn(2, 15, 15, 15), atlas=torch.rand(2, 4))


def test_bad_presets_and_configs():
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("unet")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("basenet", 1)
    with pytest.raises(ValueError, match="trunk"):
        ModelConfig(scale_trunk=(("conv", 9, 8), ("conv", 9, 8), ("conv", 9, 8), ("conv", 9, 8)))
    with pytest.raises(ValueError, match="label_names"):
        preset_config("basenet", 3, label_names=("a", "b"))


def test_save_load_roundtrip(tmp_path):
    m = build_model("full", 6, seed=3, label_names=[f"s{i}" for i in range(6)], intensity_mean=2.0, intensity_std=3.0)
    atlas = torch.rand(6, 4, 5, 6)
    path = save_model(m, tmp_path / "m.safetensors", atlas=atlas, metadata={"trained_on": "nothing"})
    assert not list(tmp_path.glob("*.tmp"))
    back = load_model(path)
    assert back.config == m.config
    assert torch.equal(back.atlas, atlas) and back.metadata == {"trained_on": "nothing"}
    for (k, a), (k2, b) in zip(m.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    # no pickle: the header is JSON and the file loads with safetensors alone
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["config"])["preset"] == "basenet+dist+prob+3d"


def test_files_without_a_distance_unit_keep_raw_millimetres(tmp_path):
    """Model files written before ModelConfig.dist_unit_mm existed fed DistBranch raw mm: they
    must load with unit 1, and such a branch must equal a unit-100 branch whose input convs
    are scaled by 100 (the unit is a pure input scaling)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    m = build_model("basenet+dist", 5, seed=1)
    assert m.config.dist_unit_mm == 100.0 and m.dist.unit_mm == 100.0
    path = save_model(m, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["config"])
    del cfg["dist_unit_mm"]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={**meta, "config": json.dumps(cfg)})
    old = load_model(tmp_path / "old.safetensors")
    assert old.config.dist_unit_mm == 1.0 and old.dist.unit_mm == 1.0
    new, old = m.dist.double(), old.dist.double()
    with torch.no_grad():
        for conv in new.convs:
            conv.weight.mul_(100.0)
    d = torch.rand(3, 7, 7, 7, dtype=torch.float64) * 150
    torch.testing.assert_close(new(d), old(d), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="dist_unit_mm"):
        preset_config("full", dist_unit_mm=0)


def test_load_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a readable"):
        load_model(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a spatialseg_fast model"):
        load_model(other)
    good = save_model(build_model("basenet", 3), tmp_path / "good.safetensors")
    data = good.read_bytes()
    with pytest.raises(ValueError):
        (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
        load_model(tmp_path / "cut.safetensors")
    newer = tmp_path / "newer.safetensors"
    newer.write_bytes(data.replace(b'"format_version":"1"', b'"format_version":"9"'))
    with pytest.raises(ValueError, match="version"):
        load_model(newer)
