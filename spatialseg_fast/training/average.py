"""Average the weights of several checkpoints of one run (stochastic weight averaging, by hand).

Late in a run the validation Dice of successive epochs goes up and down by ~0.01-0.02 with
constant-rate Adam steps: each epoch's weights sit at another point of the same wide basin. Their
mean sits nearer its centre and generalises better than any one of them (Izmailov et al., 2018,
"Averaging weights leads to wider optima and better generalization"); on this project's validation
subjects the mean of three image-first epochs scored 0.544 slab Dice against 0.534 for the best
single one (bench/RESULTS.md). The network has no batch statistics, so averaged weights need no
re-estimation pass.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..model.io import load_model, save_model


def _same_atlas(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if hasattr(a, "index") and hasattr(b, "index") and not isinstance(a, torch.Tensor):
        return torch.equal(a.index, b.index) and torch.equal(a.prob, b.prob)
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)


def average_checkpoints(paths, out) -> Path:
    """Write to `out` a model whose every parameter is the mean of that parameter over the model
    files `paths` (same configuration and atlas: checkpoints of one run; at least two), in float32. The atlas, registration template and
    metadata (its training record included) are those of the last file, with the sources listed
    under metadata["averaged_from"]; optimizer moments are not carried over (the result is a model
    to use or ship, not a checkpoint to resume). Returns the path written."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two model files; got {len(paths)}")
    if Path(out).resolve() in {p.resolve() for p in paths}:
        raise ValueError(f"the output {out} is one of the inputs: write the average to a new file")
    last = load_model(paths[-1])
    total = {k: v.double().clone() for k, v in last.state_dict().items()}
    for p in paths[:-1]:
        m = load_model(p)
        if m.config != last.config:
            raise ValueError(f"{p} holds a model with another configuration than {paths[-1]}: cannot average them")
        if not _same_atlas(m.atlas, last.atlas):
            raise ValueError(f"{p} carries another atlas than {paths[-1]}: average checkpoints of one run only")
        for k, v in m.state_dict().items():
            total[k] += v.double()
    last.load_state_dict({k: (v / len(paths)).to(torch.float32) for k, v in total.items()})
    meta = dict(last.metadata)  # the last one's training record stays: the card shows what it had seen
    meta["averaged_from"] = [str(p) for p in paths]
    return save_model(last, out, atlas=last.atlas, metadata=meta)
