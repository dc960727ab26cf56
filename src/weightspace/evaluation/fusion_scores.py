"""Scores of the fusion protocol: what :mod:`weightspace.evaluation.fusion_protocol`
returns and :mod:`weightspace.reporting.fusion_report` names, tabulates and plots.

Plain frozen dataclasses of floats (means over the ``S`` pairs of an experiment, plus the
per-pair records and Table 2 rows), so a report can be built, tested and re-drawn without
torch models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FINETUNE_INITS = ("parent_a", "parent_b", "clafusion", "depth_aligned_b", "random_init")
"""Initialisations retrained for the same epochs (Table 1, right), in report order."""

KD_INITS = ("random_b", "pretrained_b", "depth_aligned_b", "fused", "random_fused")
"""Student initialisations of the teacher–student experiment (Table 5), in report order."""


@dataclass(frozen=True)
class PairScores:
    """One-shot accuracies of one pair ``(A_i, B_i)`` and its same-depth pair
    ``(A_i, A_{i+1})``; seconds are wall times of the fusions."""

    model_a_acc: float
    model_b_acc: float
    ensemble_acc: float
    vanilla_avg_acc: float
    otfusion_acc: float
    otfusion_seconds: float
    same_depth_ensemble_acc: float
    clafusion_acc: float
    clafusion_val_acc: float
    depth_aligned_b_acc: float
    fusion_seconds: float
    mapping: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class KScores:
    """Table 2 row: K models alternating deep / shallow and their CLAFusion."""

    k: int
    member_accs: tuple[float, ...]
    ensemble_acc: float
    fused_acc: float


@dataclass(frozen=True)
class OneShotScores:
    """Per-pair records and Table 2 rows (K ascending as configured)."""

    pairs: tuple[PairScores, ...]
    k_rows: tuple[KScores, ...]

    def mean(self, name: str) -> float:
        """Mean over pairs of the :class:`PairScores` field ``name``."""
        return float(np.mean([getattr(p, name) for p in self.pairs]))

    def values(self, name: str) -> list[float]:
        """The :class:`PairScores` field ``name`` of every pair, in pair order."""
        return [float(getattr(p, name)) for p in self.pairs]


@dataclass(frozen=True)
class FinetuneScores:
    """Test accuracy at the best validation epoch (mean over pairs) per initialisation
    (:data:`FINETUNE_INITS`), per K (K = 2: the first pair), the mean validation
    curves (epoch 0 first), and per initialisation the accuracy of every pair (pair
    order as :attr:`OneShotScores.pairs`; the spread and the paired comparisons)."""

    best_test_acc: dict[str, float]
    k_best_test_acc: dict[int, float]
    curves: dict[str, tuple[float, ...]]
    pair_test_acc: dict[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class CostScores:
    """Training the fused architecture to the fused model's validation accuracy.

    ``ratio`` = ``train_seconds / fusion_seconds``; a lower bound when not ``reached``
    within ``max_epochs``.
    """

    train_epochs: int
    train_seconds: float
    fusion_seconds: float
    ratio: float
    reached: bool


@dataclass(frozen=True)
class TeacherStudentScores:
    """Means over teacher–student pairs: one-shot accuracies, parameter counts, and per
    student initialisation (:data:`KD_INITS`) the best test accuracy over the sweep and
    the mean over temperatures of the best-by-validation run."""

    teacher_acc: float
    student_acc: float
    fused_student_oneshot_acc: float
    kd_best_acc: dict[str, float]
    kd_mean_acc: dict[str, float]
    n_params_teacher: float
    n_params_student: float
    n_params_fused_student: float
