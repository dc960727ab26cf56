"""The fusion report from a fixed hand-made score object: golden markdown tables, the
flat metrics.json keys and values, the per-experiment JSON and the figures."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from weightspace.evaluation.fusion_scores import (
    FINETUNE_INITS,
    KD_INITS,
    CostScores,
    FinetuneScores,
    KScores,
    OneShotScores,
    PairScores,
    TeacherStudentScores,
)
from weightspace.reporting import fusion_report as fr

GOLDEN_TABLES = Path(__file__).with_name("golden_fusion_tables.md")


def _pair(a: float, b: float, vanilla: float, ot: float, cla: float) -> PairScores:
    return PairScores(
        model_a_acc=a, model_b_acc=b, ensemble_acc=0.95, vanilla_avg_acc=vanilla,
        otfusion_acc=ot, otfusion_seconds=0.01, same_depth_ensemble_acc=0.93,
        clafusion_acc=cla, clafusion_val_acc=cla + 0.02, depth_aligned_b_acc=b,
        fusion_seconds=0.02, mapping=((0, 2),),
    )  # fmt: skip


SHOTS = {
    "mlp": OneShotScores(
        pairs=(_pair(0.9, 0.8, 0.3, 0.85, 0.7), _pair(0.92, 0.82, 0.4, 0.87, 0.6)),
        k_rows=(
            KScores(k=2, member_accs=(0.9, 0.8), ensemble_acc=0.95, fused_acc=0.7),
            KScores(k=4, member_accs=(0.9, 0.8, 0.92, 0.82), ensemble_acc=0.96, fused_acc=0.5),
        ),
    )
}
FINETUNED = {
    "mlp": FinetuneScores(
        best_test_acc=dict(zip(FINETUNE_INITS, (0.91, 0.83, 0.93, 0.84, 0.75), strict=True)),
        k_best_test_acc={2: 0.92, 4: 0.88},
        curves={name: (0.5, 0.7, 0.8) for name in FINETUNE_INITS},
        pair_test_acc=dict(
            zip(
                FINETUNE_INITS,
                ((0.9, 0.92), (0.8, 0.86), (0.93, 0.93), (0.84, 0.84), (0.75, 0.75)),
                strict=True,
            )
        ),
    )
}
COSTS = {
    "mlp": CostScores(
        train_epochs=3, train_seconds=1.5, fusion_seconds=0.02, ratio=75.0, reached=False
    )
}
KD = TeacherStudentScores(
    teacher_acc=0.95, student_acc=0.8, fused_student_oneshot_acc=0.6,
    kd_best_acc=dict(zip(KD_INITS, (0.7, 0.85, 0.86, 0.88, 0.72), strict=True)),
    kd_mean_acc=dict(zip(KD_INITS, (0.69, 0.84, 0.85, 0.87, 0.71), strict=True)),
    n_params_teacher=12345.0, n_params_student=2345.0, n_params_fused_student=3456.0,
)  # fmt: skip
DISTILLED = {"ts": KD}
STAGES = {"fuse_one_shot": 1.5, "finetune_inits": 10.0}


@pytest.fixture(scope="module")
def report():
    out = fr.assemble_report(SHOTS, FINETUNED, COSTS, DISTILLED, None, STAGES)
    yield out
    for fig in out[3:]:
        plt.close(fig)


def test_tables_match_the_golden_markdown(report):
    assert report[1] == GOLDEN_TABLES.read_text()


def test_metrics_keys_and_values(report):
    metrics = report[0]
    exp = [k for k in metrics if k.startswith("mlp.")]
    assert list(metrics)[: len(exp) - 4] == [k[4:] for k in exp[:-4]]  # headline unprefixed
    assert exp[-4:] == ["mlp.k2_fused_acc", "mlp.k2_ensemble_acc", "mlp.k4_fused_acc",
                        "mlp.k4_ensemble_acc"]  # fmt: skip
    assert metrics["clafusion_acc"] == pytest.approx(0.65)  # mean over the two pairs
    assert metrics["vanilla_avg_acc"] == pytest.approx(0.35)
    assert metrics["mlp.k4_finetuned_acc"] == 0.88 and metrics["mlp.k4_fused_acc"] == 0.5
    assert metrics["fusion_cost_ratio"] == 75.0 and metrics["fusion_cost_reached"] == 0.0
    assert metrics["train_to_fused_acc_epochs"] == 3.0
    assert metrics["ts.kd_pretrained_b_student_acc"] == 0.8
    assert metrics["ts.kd_fused_mean_acc"] == 0.87 and metrics["ts.n_params_teacher"] == 12345
    assert "mapping" not in metrics and "ts.mapping" not in metrics
    assert all(isinstance(v, float) for v in metrics.values())
    assert len(metrics) == 42 + 42 + 4 + 16  # 11 pair keys, 9 of them accuracies (with _std)


def test_spread_and_paired_comparison_by_hand(report):
    metrics = report[0]
    assert metrics["n_pairs"] == 2.0
    assert metrics["clafusion_acc_std"] == pytest.approx(0.1 / 2**0.5)  # 0.7, 0.6
    assert metrics["parent_b_finetuned_acc_std"] == pytest.approx(0.06 / 2**0.5)
    assert metrics["clafusion_finetuned_acc_std"] == 0.0
    # best fine-tuned parent per pair: 0.90, 0.92 -> differences 0.03, 0.01
    assert metrics["ft_clafusion_vs_best_parent_mean"] == pytest.approx(0.02)
    assert metrics["ft_clafusion_vs_best_parent_std"] == pytest.approx(0.02 / 2**0.5)
    half = 12.706204736 * (0.02 / 2**0.5) / 2**0.5  # t(0.975, df=1) * s / sqrt(n)
    assert metrics["ft_clafusion_vs_best_parent_ci_low"] == pytest.approx(0.02 - half)
    assert metrics["ft_clafusion_vs_best_parent_ci_high"] == pytest.approx(0.02 + half)
    assert metrics["ft_clafusion_vs_best_parent_wins"] == 2.0
    assert "| mlp | 2 | +2.00 ± 1.41 | [-10.71, +14.71] | 2 / 2 | within the spread |" in report[1]


def test_headline_and_details(report):
    metrics = fr.assemble_report(SHOTS, FINETUNED, COSTS, DISTILLED, "mlp")[0]
    assert metrics == report[0]
    details = json.loads(report[2])
    assert set(details) == {"mlp", "ts"}
    assert details["mlp"]["k2_finetuned_acc"] == 0.92 and "n_params_teacher" in details["ts"]


def test_figures(report):
    k_fig, curves_fig = report[3:]
    (ax,) = k_fig.axes
    assert [line.get_label() for line in ax.get_lines()] == [
        "ensemble", "CLAFusion one shot", "CLAFusion + fine-tune", "best member",
    ]  # fmt: skip
    assert list(ax.get_lines()[1].get_ydata()) == [0.7, 0.5]
    (ax,) = curves_fig.axes
    assert [line.get_label() for line in ax.get_lines()] == list(FINETUNE_INITS)


def test_without_teacher_student_or_stage_times():
    metrics, tables, *figs = fr.assemble_report(SHOTS, FINETUNED, COSTS, {})
    for fig in figs[1:]:
        plt.close(fig)
    assert not [k for k in metrics if k.startswith("ts.")]
    assert "| ts |" not in tables and "Stage wall times" not in tables
