"""pipeline.training.average: which epochs are kept, the average, and BatchNorm statistics re-estimated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.config import Recipe
from pipeline.errors import UserError
from pipeline.paths import TopFiles
from pipeline.training.average import TopK, average_weights, has_batchnorm, recompute_batchnorm


def _model(value: float) -> nn.Module:
    m = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(value)
    return m


def test_top_k_keeps_the_k_best_epochs_and_survives_a_restart(tmp_path: Path) -> None:
    top = TopK(TopFiles(tmp_path / "top"), 3)
    kept = [top.offer(e, s, _model(e)) for e, s in enumerate([0.1, 0.5, 0.3, 0.4, 0.2, 0.3], start=1)]
    # 0.1 kept at first, then pushed out; 0.2, and the second 0.3 (a tie with the 3rd best), are not kept
    assert kept == [True, True, True, True, False, False]
    assert top.ranked() == [2, 4, 3] and sorted(f.name for f in (tmp_path / "top").glob("*.pt")) == [
        "epoch002.pt",
        "epoch003.pt",
        "epoch004.pt",
    ]
    assert json.loads((tmp_path / "top" / "index.json").read_text()) == {"2": 0.5, "3": 0.3, "4": 0.4}
    # a resumed run reads the index back; a file a kill left unlisted goes at the next keep
    (tmp_path / "top" / "epoch009.pt").write_bytes(b"half-written")
    again = TopK(TopFiles(tmp_path / "top"), 3)
    assert again.ranked() == [2, 4, 3]
    assert again.offer(10, 0.45, _model(10.0))
    assert again.ranked() == [2, 10, 4] and not (tmp_path / "top" / "epoch009.pt").exists()
    assert not (tmp_path / "top" / "epoch003.pt").exists()
    weights = again.load()  # best first: epochs 2, 10, 4
    assert [w["0.weight"].flatten()[0].item() for w in weights] == [2.0, 10.0, 4.0]
    assert not again.would_keep(float("nan"))


def test_average_weights_is_the_mean_of_floats_and_keeps_counters() -> None:
    a, b, c = (_model(v).state_dict() for v in (1.0, 2.0, 6.0))
    a["1.num_batches_tracked"] = torch.tensor(7)
    avg = average_weights([a, b, c])
    torch.testing.assert_close(avg["0.weight"], torch.full_like(a["0.weight"], 3.0))
    torch.testing.assert_close(avg["1.bias"], torch.full_like(a["1.bias"], 3.0))
    assert avg["1.num_batches_tracked"].item() == 7 and avg["1.num_batches_tracked"].dtype == torch.int64
    assert avg["0.weight"].dtype == torch.float32


def test_batchnorm_statistics_are_those_of_the_inputs() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(bn)
    assert has_batchnorm(model) and not has_batchnorm(nn.Conv2d(1, 1, 1))
    bn.running_mean.fill_(100.0)  # stale statistics, as averaging leaves them
    batches = [torch.randn(4, 3, 5, 5) * 2 + torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1) for _ in range(3)]
    recompute_batchnorm(model, batches)
    # update_bn averages the batch statistics with equal weights (momentum None): equal batches, so the overall mean
    mean = torch.stack([x.mean((0, 2, 3)) for x in batches]).mean(0)
    var = torch.stack([x.transpose(0, 1).reshape(3, -1).var(1, unbiased=True) for x in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert bn.momentum == 0.1  # restored after the pass


def test_average_best_of_one_is_refused() -> None:
    with pytest.raises(UserError, match="recipe.average_best must be 0"):
        Recipe(average_best=1)
    assert Recipe(average_best=3).average_best == 3
