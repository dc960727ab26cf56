"""The fusion protocol's small pieces: ensemble accuracy, time-to-accuracy, guards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightspace.data.base import Split, SplitDataset
from weightspace.errors import InvalidParameterError
from weightspace.evaluation import fusion_eval as fe
from weightspace.nets.registry import build_model


class _Fixed(nn.Module):
    """Returns fixed logits (N, C) whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(x)]


def test_ensemble_accuracy_averages_probabilities_hand_case():
    split = Split(torch.zeros(3, 1), torch.tensor([0, 1, 1]))
    # model 1 is confidently right on sample 0 and wrong on 1, 2; model 2 mildly right on
    # 1, 2 and mildly wrong on 0: the mean of probabilities gets 0 and 2 right, not 1.
    m1 = _Fixed(torch.tensor([[4.0, 0.0], [0.3, 0.0], [0.1, 0.0]]))
    m2 = _Fixed(torch.tensor([[0.0, 1.0], [0.0, 0.2], [0.0, 1.0]]))
    assert fe.accuracy_of(m1, split) == pytest.approx(1 / 3)
    assert fe.accuracy_of(m2, split) == pytest.approx(2 / 3)
    # p1 = softmax rows: [.982,.018],[.574,.426],[.525,.475]; p2: [.269,.731],[.450,.550],
    # [.269,.731] -> means [.626,.374] (0 ok), [.512,.488] (wrong), [.397,.603] (ok)
    assert fe.ensemble_accuracy([m1, m2], split) == pytest.approx(2 / 3)


def _dataset(n: int = 96) -> SplitDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.flatten(1)[:, 0] > 0).long()
    split = Split(x, y)
    return SplitDataset("toy", split, split, split, 2, (1, 8, 8), ("neg", "pos"))


def test_time_to_accuracy_reached_and_not_reached():
    template = build_model("mlp", {"hidden": [8]}, (1, 8, 8), 2)
    cfg = fe.CostConfig(max_epochs=3, batch_size=32)
    easy = fe.time_to_accuracy(template, _dataset(), 0.0, cfg)
    assert easy["reached"] == 1.0 and easy["epochs"] == 1.0 and easy["seconds"] > 0
    never = fe.time_to_accuracy(template, _dataset(), 1.01, cfg)
    assert never["reached"] == 0.0 and never["epochs"] == 3.0
    with pytest.raises(InvalidParameterError, match="optimizer"):
        fe.time_to_accuracy(template, _dataset(), 0.5, fe.CostConfig(optimizer="lbfgs"))


def test_one_shot_needs_two_pairs_and_enough_models_for_k():
    ds = _dataset()
    deep = [build_model("mlp", {"hidden": [6, 4]}, (1, 8, 8), 2) for _ in range(2)]
    shallow = [build_model("mlp", {"hidden": [5]}, (1, 8, 8), 2) for _ in range(2)]
    with pytest.raises(InvalidParameterError, match="needs >= 2 deep"):
        fe.one_shot(deep[:1], shallow[:1], ds, fe.FusionProtocol())
    with pytest.raises(InvalidParameterError, match="K=6"):
        fe.one_shot(deep, shallow, ds, fe.FusionProtocol(ks=(2, 6)))
    out = fe.one_shot(deep, shallow, ds, fe.FusionProtocol(ks=(2, 4)))
    assert set(out["k_fused"]) == {2, 4}
    assert all(0.0 <= v <= 1.0 for k, v in out["metrics"].items() if k.endswith("_acc"))
    assert len(out["fused"]) == 2 and out["pairs"][0]["mapping"] == [[0]]
