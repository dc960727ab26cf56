"""Knowledge distillation (Hinton et al.) from frozen teachers into a student.

:mod:`~weightspace.ensembles.kd.loss` holds the loss and the teachers' softened
probabilities, :mod:`~weightspace.ensembles.kd.config` the hyper-parameters and outcome,
:mod:`~weightspace.ensembles.kd.trainer` the training of one student (:func:`distill`) and
:mod:`~weightspace.ensembles.kd.sweep` the temperature/alpha grid of CLAFusion's Table 5
(:func:`kd_sweep`).
"""

from weightspace.ensembles.kd.config import KDConfig, KDResult
from weightspace.ensembles.kd.loss import kd_loss, teacher_probs
from weightspace.ensembles.kd.sweep import kd_sweep
from weightspace.ensembles.kd.trainer import distill

__all__ = ["KDConfig", "KDResult", "distill", "kd_loss", "kd_sweep", "teacher_probs"]
