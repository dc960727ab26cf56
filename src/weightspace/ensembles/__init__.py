"""Ensembles and distillation: knowledge distillation (more methods come with later issues)."""

from weightspace.ensembles.kd import KDConfig, KDResult, distill, kd_loss, kd_sweep, teacher_probs

__all__ = ["KDConfig", "KDResult", "distill", "kd_loss", "kd_sweep", "teacher_probs"]
