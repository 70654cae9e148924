"""Scaling a model's atlas prior: the scaled model is the original fed `factor * atlas`."""
import pytest
import torch

from spatialseg_fast import build_model, load_model, save_model
from spatialseg_fast.training.prior_scale import scale_prior, write_scaled


def _model(preset="basenet+dist+prob", seed=0):
    m = build_model(preset, 6, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a ProbBranch far from its near-identity start, so ReLUs cut somewhere
        for layer in m.prob.layers if m.prob is not None else ():
            layer.weight.normal_(0, 0.5, generator=g)
    return m


def _head(m, rows, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = len(rows)
    base = torch.rand(n, m.fc1.in_features, generator=g)
    G = m.config.patch.grid
    dist = torch.rand(n, G, G, G, generator=g) * 100
    return m.head(base, dist, None, rows)


@pytest.mark.parametrize("factor", [0.0, 0.35, 0.7, 1.0, 2.5])
def test_scaled_prior_equals_the_model_fed_a_scaled_atlas(factor):
    original = _model()
    scaled = scale_prior(_model(), factor)
    rows = torch.softmax(torch.randn(64, 6, generator=torch.Generator().manual_seed(0)) * 3, 1)
    want = _head(original, factor * rows)
    torch.testing.assert_close(_head(scaled, rows), want, rtol=1e-5, atol=1e-5)
    if factor != 1.0:  # and it is a different model: the prior did count
        assert not torch.allclose(_head(original, rows), want, atol=1e-3)
    if factor == 0.0:  # the network with its ProbBranch input dropped, as position dropout trained it
        torch.testing.assert_close(_head(scaled, rows), _head(original, torch.zeros_like(rows)))


def test_write_scaled_records_the_scale_and_refuses_bad_input(tmp_path):
    src = save_model(_model(), tmp_path / "m.safetensors", metadata={"data": "toy"})
    once = write_scaled(src, tmp_path / "a.safetensors", 0.5)
    twice = write_scaled(once, tmp_path / "b.safetensors", 0.5)
    a, b, m = load_model(once), load_model(twice), load_model(src)
    assert a.metadata["prior_scale"] == 0.5 and b.metadata["prior_scale"] == 0.25 and a.metadata["data"] == "toy"
    torch.testing.assert_close(b.prob.layers[-1].weight, 0.25 * m.prob.layers[-1].weight)
    for name, value in m.state_dict().items():  # nothing else changes
        if not name.startswith("prob.layers.2"):
            assert torch.equal(value, b.state_dict()[name]), name
    from spatialseg_fast.modelcard import card

    assert "x 0.25" in card(twice)["prior scale"] and "prior scale" not in card(src)
    with pytest.raises(ValueError, match="new file"):
        write_scaled(src, src, 0.5)
    with pytest.raises(ValueError, match=">= 0"):
        scale_prior(_model(), -1)
    with pytest.raises(ValueError, match="no ProbBranch"):
        scale_prior(build_model("basenet", 6), 0.5)
