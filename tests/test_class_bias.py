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


def test_offsets_raise_mean_dice_on_the_small_classes_and_the_bookkeeping_is_exact():
    scores, truth = _imbalanced(0)
    logs = []
    bias = fit_class_bias([(scores[:12000], truth[:12000])], L, log=logs.append)
    assert bias[0] == 0 and bias[4] > 0 and bias[5] > 0
    before, after = _mean_dice(scores[:12000], truth[:12000], 0), _mean_dice(scores[:12000], truth[:12000], bias)
    assert after > before + 0.04
    # the incrementally kept counts give the same Dice as a fresh argmax with the offsets
    reported = float(re.search(r"mean Dice ([0-9.]+)", logs[-1]).group(1))
    assert reported == pytest.approx(after, abs=1e-4)
    # and the offsets carry over to voxels they were not fitted on
    assert _mean_dice(scores[12000:], truth[12000:], bias) > _mean_dice(scores[12000:], truth[12000:], 0) + 0.04


def test_offsets_of_a_calibrated_balanced_problem_stay_small():
    g = torch.Generator().manual_seed(1)
    truth = torch.randint(0, L, (6000,), generator=g)
    scores = (torch.randn(6000, L, generator=g) + 2.0 * torch.nn.functional.one_hot(truth, L)).log_softmax(1)
    bias = fit_class_bias([(scores, truth)], L)
    assert bias.abs().max() <= 0.5


def test_fit_refuses_scores_of_another_class_count():
    scores, truth = _imbalanced(0, n=100)
    with pytest.raises(ValueError, match="do not match"):
        fit_class_bias([(scores, truth)], L + 1)


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
    m, a2 = load_model(src), load_model(twice)
    assert load_model(twice).metadata["class_bias"] == [0.0, 2.0, 0.0, 1.0, 0.0, 0.0]
    assert a2.metadata["data"] == "toy"
    torch.testing.assert_close(a2.fc3.bias, m.fc3.bias + 2 * torch.tensor(b))
    for name, value in m.state_dict().items():  # nothing else changes
        if name != "fc3.bias":
            assert torch.equal(value, a2.state_dict()[name]), name
    from spatialseg_fast.modelcard import card

    assert card(twice)["class offsets"].startswith("2 of 6 class logits offset after training (+1 to +2;")
    assert "class offsets" not in card(src)
    with pytest.raises(ValueError, match="new file"):
        write_with_bias(src, src, b)


def test_validation_scores_are_the_engines_log_probabilities_on_brain_voxels():
    g = torch.Generator().manual_seed(0)
    m = build_model("basenet", L, seed=0)
    with torch.no_grad():
        m.fc3.weight.mul_(20)
    image = (torch.rand(14, 17, 12, generator=g) + 0.5).numpy()
    image[:3] = 0  # background
    labels = np.where(image != 0, (image * 10).astype(np.int64) % L, 0)
    [(logp, truth)] = validation_scores(m, [SimpleNamespace(image=image, labels=labels)])
    brain = image != 0
    assert logp.shape == (int(brain.sum()), L) and torch.equal(truth, torch.from_numpy(labels[brain]))
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(len(logp)), atol=2e-3, rtol=0)
    pred = segment(image, m, mask=brain)
    assert (logp.argmax(1).numpy() == pred[brain]).mean() > 0.99  # float16 maps: rare ties may differ
