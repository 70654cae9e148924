"""Per-class logit offsets chosen on validation voxels: they raise mean Dice and change nothing else."""
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spatialseg_fast import build_model, load_model, save_model, segment
from spatialseg_fast.training.class_bias import add_class_bias, fit_class_bias, validation_scores, write_with_bias

L = 6


def _mean_dice(scores, truth, bias):
    pred = (scores + bias).argmax(1)
    d = []
    for c in range(1, L):
        total = int((pred == c).sum() + (truth == c).sum())
        if total:
            d.append(2 * int(((pred == c) & (truth == c)).sum()) / total)
    return float(np.mean(d))


def _imbalanced(seed, n=20000):
    """Log-probabilities that know the truth but are drawn against the small classes 4 and 5, as a
    cross-entropy network's are at the boundaries of small structures."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.multinomial(torch.tensor([0.3, 0.3, 0.2, 0.14, 0.04, 0.02]), n, replacement=True, generator=g)
    scores = torch.randn(n, L, generator=g) + 1.5 * torch.nn.functional.one_hot(truth, L)
    scores[:, 4:] -= 2.0
    return scores.log_softmax(1), truth


def _reported(logs) -> float:
    return float(re.search(r"mean Dice ([0-9.]+)", logs[-1]).group(1))


def test_offsets_raise_mean_dice_on_the_small_classes():
    scores, truth = _imbalanced(0)
    logs = []
    bias = fit_class_bias([(scores[:12000], truth[:12000])], L, log=logs.append)
    assert bias[4] > 0 and bias[5] > 0  # the classes drawn against get raised
    before, after = _mean_dice(scores[:12000], truth[:12000], 0), _mean_dice(scores[:12000], truth[:12000], bias)
    assert after > before + 0.04
    # the incrementally kept counts give the Dice of a fresh argmax with the offsets
    assert _reported(logs) == pytest.approx(after, abs=2e-6)
    # other voxels of the same (toy, independent) distribution gain too; unseen subjects need not
    assert _mean_dice(scores[12000:], truth[12000:], bias) > _mean_dice(scores[12000:], truth[12000:], 0) + 0.04


@pytest.mark.parametrize("seed", range(4))
def test_kept_counts_stay_exact_when_scores_tie(seed):
    """float16 maps (as validation_scores reads them) and coarse steps make exact ties common:
    the kept counts must still be those of argmax, which breaks ties to the lowest class."""
    scores, truth = _imbalanced(seed, n=8000)
    coarse = (scores * 4).round() / 4  # ties everywhere
    for x in (scores.softmax(1).half().float().clamp_min(1e-8).log(), coarse):
        logs = []
        bias = fit_class_bias([(x[:5000], truth[:5000]), (x[5000:], truth[5000:])], L, log=logs.append)
        assert _reported(logs) == pytest.approx(_mean_dice(x, truth, bias), abs=2e-6)


def test_offsets_of_a_calibrated_balanced_problem_stay_small():
    g = torch.Generator().manual_seed(1)
    truth = torch.randint(0, L, (6000,), generator=g)
    scores = (torch.randn(6000, L, generator=g) + 2.0 * torch.nn.functional.one_hot(truth, L)).log_softmax(1)
    bias = fit_class_bias([(scores, truth)], L)
    assert bias.abs().max() <= 0.5


def test_fit_refuses_scores_it_cannot_use():
    scores, truth = _imbalanced(0, n=100)
    with pytest.raises(ValueError, match="do not match"):
        fit_class_bias([(scores, truth)], L + 1)
    bad = scores.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit_class_bias([(bad, truth)], L)
    with pytest.raises(ValueError, match="class indices"):
        fit_class_bias([(scores, truth + L)], L)


def test_add_class_bias_shifts_each_logit_by_its_offset_and_nothing_else():
    m = build_model("basenet+dist", L, seed=0)
    g = torch.Generator().manual_seed(0)
    base = torch.rand(32, m.fc1.in_features, generator=g)
    dist = torch.rand(32, *(m.config.patch.grid,) * 3, generator=g) * 100
    want = m.head(base, dist, None, None)
    bias = torch.tensor([0.0, 0.5, -1.0, 2.0, 0.0, 3.0])
    got = add_class_bias(m, bias).head(base, dist, None, None)
    torch.testing.assert_close(got - want, bias.expand(32, L), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="one offset per class"):
        add_class_bias(m, torch.zeros(L + 1))


def test_write_with_bias_records_and_adds_the_offsets(tmp_path):
    src = save_model(build_model("basenet", L, seed=0), tmp_path / "m.safetensors", metadata={"data": "toy"})
    b = [0.0, 1.0, 0.0, 0.5, 0.0, 0.0]
    once = write_with_bias(src, tmp_path / "a.safetensors", b)
    twice = write_with_bias(once, tmp_path / "b.safetensors", b)
    original, offset_twice = load_model(src), load_model(twice)
    assert offset_twice.metadata["class_bias"] == [0.0, 2.0, 0.0, 1.0, 0.0, 0.0]
    assert offset_twice.metadata["data"] == "toy"
    torch.testing.assert_close(offset_twice.fc3.bias, original.fc3.bias + 2 * torch.tensor(b))
    for name, value in original.state_dict().items():  # nothing else changes
        if name != "fc3.bias":
            assert torch.equal(value, offset_twice.state_dict()[name]), name
    from spatialseg_fast.modelcard import card

    assert card(twice)["class offsets"].startswith("2 of 6 class logits offset after training (+1 to +2;")
    assert "class offsets" not in card(src)
    with pytest.raises(ValueError, match="new file"):
        write_with_bias(src, src, b)


def test_validation_scores_are_the_engines_log_probabilities_on_brain_voxels():
    g = torch.Generator().manual_seed(0)
    values = (0, 4, 11, 23, 30, 31)  # label values that are not the class indices
    m = build_model("basenet", L, seed=0, label_values=values, label_names=tuple("abcdef"))
    with torch.no_grad():
        m.fc3.weight.mul_(20)
    image = (torch.rand(14, 17, 12, generator=g) + 0.5).numpy()
    image[:3] = 0  # background
    classes = np.where(image != 0, (image * 10).astype(np.int64) % L, 0)
    labels = np.asarray(values)[classes]
    [(logp, truth)] = validation_scores(m, [SimpleNamespace(image=image, labels=labels)])
    brain = image != 0
    assert logp.shape == (int(brain.sum()), L) and torch.equal(truth, torch.from_numpy(classes[brain]))
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(len(logp)), atol=2e-3, rtol=0)
    pred = segment(image, m, mask=brain)
    assert (np.asarray(values)[logp.argmax(1).numpy()] == pred[brain]).mean() > 0.99  # float16 maps: rare ties
    with pytest.raises(ValueError, match="outside the model's label table"):
        validation_scores(m, [SimpleNamespace(image=image, labels=np.where(brain, 5, 0))])
