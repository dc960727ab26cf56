"""D2NWG's comparisons: candidate choice on the support set, the row copy audit, keys."""

from __future__ import annotations

import pytest
import torch

from weightspace.evaluation.d2nwg_comparisons import (
    ComparisonScores,
    FinetuneResult,
    head_copy_audit,
    row_copy_audit,
    support_choice,
)
from weightspace.evaluation.fewshot import GroupData
from weightspace.nets.registry import build_model
from weightspace.reporting.d2nwg_report import comparison_metrics
from weightspace.zoo.tasks import TaskStack


def _zoo(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    stacked = {"1.weight": torch.randn(8, 3, 32, generator=gen) * 3,
               "1.bias": torch.randn(8, 3, generator=gen)}  # fmt: skip
    task = torch.arange(4).repeat_interleave(2)  # two runs of each of 4 tasks
    classes = torch.tensor([[0, 1, 2], [1, 2, 3], [0, 2, 3], [0, 1, 3]])[task]
    return stacked, task, classes


def test_copies_of_zoo_rows_are_flagged_and_fresh_rows_are_not():
    stacked, task, classes = _zoo()
    assert row_copy_audit(stacked, stacked, classes, 0.5)["copy_share"] == 1.0
    jitter = {k: v + 0.01 * torch.randn_like(v) for k, v in stacked.items()}
    assert row_copy_audit(jitter, stacked, classes, 0.5)["copy_share"] == 1.0
    fresh, _, _ = _zoo(seed=1)
    assert row_copy_audit(fresh, stacked, classes, 0.5)["copy_share"] < 0.2
    assert head_copy_audit(stacked, stacked, task, 0.5)["copy_share"] == 1.0
    assert head_copy_audit(fresh, stacked, task, 0.5)["copy_share"] == 0.0


def test_support_choice_takes_the_best_candidate_on_the_support_set():
    template = build_model("mlp", {"hidden": []}, (2,), 2)
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one task, one sample per class
    support = TaskStack(x, torch.tensor([[0, 1]]), torch.tensor([2]))
    good = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bad = -good
    stacked = {"1.weight": torch.stack([bad, good, bad]), "1.bias": torch.zeros(3, 2)}
    group = GroupData([object()], support, x[:, None], support, support)
    chosen = support_choice(template, stacked, group, 3)
    assert torch.equal(chosen["1.weight"][0], good)


def test_comparison_metric_keys():
    curve = torch.tensor([[0.2, 0.8], [0.4, 0.6]])
    c = ComparisonScores(
        baselines={"unseen": {"prototype": 0.9, "probe (converged)": 0.8}},
        ablations={"novel": {"unconditional": 0.2}},
        zoo_best_of_k=0.95,
        zoo_best_of_all=0.97,
        finetune={
            "unseen": FinetuneResult((1, 5), {"nearest member": curve}, {"nearest member": 0.01})
        },
        audit={"method": {"novel": {"copy_share": 0.25, "copy_reference_distance": 2.0,
                                    "copy_threshold": 1.0, "copy_nearest_distance_median": 3.0}}},
    )  # fmt: skip
    m = comparison_metrics(c)
    assert m["unseen_prototype_acc"] == 0.9
    assert m["unseen_probe_converged_acc"] == 0.8
    assert m["novel_unconditional_acc"] == 0.2
    assert m["seen_zoo_best_of_k_acc"] == 0.95
    assert m["seen_zoo_best_of_all_acc"] == 0.97
    assert m["unseen_finetune_nearest_acc"] == pytest.approx(0.7)  # mean of the last column
    assert m["unseen_finetune_nearest_lr"] == 0.01
    assert m["memorization_copy_share_novel"] == 0.25


def test_seen_best_paired_by_hand():
    from types import SimpleNamespace

    from weightspace.reporting.d2nwg_report import seen_best_paired

    zoo = torch.tensor([0.85, 0.8, 0.75])
    ours = torch.tensor([0.9, 0.8, 0.7])  # gaps +0.05, 0, -0.05
    c = SimpleNamespace(zoo_best_per_task=zoo)
    s = SimpleNamespace(comparisons=c, groups={"seen": SimpleNamespace(best=ours)})
    m = seen_best_paired(s)
    p = "seen_best_minus_zoo_best_of_k"
    assert m[f"{p}_mean"] == pytest.approx(0.0, abs=1e-7)
    half = 4.302652729911275 * 0.05 / 3**0.5  # t(0.975, 2) x std / sqrt(n)
    assert m[f"{p}_ci_high"] == pytest.approx(half, rel=1e-5)
    assert m[f"{p}_ci_low"] == pytest.approx(-half, rel=1e-5)
    assert (m[f"{p}_wins"], m[f"{p}_losses"], m[f"{p}_tasks"]) == (1.0, 1.0, 3.0)
    assert seen_best_paired(SimpleNamespace(comparisons=None, groups={})) == {}
