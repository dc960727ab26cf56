"""Ensembles and their distillation.

- :mod:`~weightspace.ensembles.kd`: knowledge distillation (Hinton et al.), the shared
  student training loop, and one-to-one distillation into a BatchEnsemble;
- :mod:`~weightspace.ensembles.batchensemble`: BatchEnsemble (Wen et al.) of any
  registry architecture (:mod:`~weightspace.ensembles.be_layers`: its layers);
- :mod:`~weightspace.ensembles.latentbe`: LatentBE's merge of a BatchEnsemble into one
  network (Nam et al., ICML 2022, eq. 6);
- :mod:`~weightspace.ensembles.perturb`: ODS, ConfODS and TDiv−SDiv input perturbations.
"""

from weightspace.ensembles.batchensemble import BatchEnsemble, tile, untile
from weightspace.ensembles.kd import KDConfig, KDResult, distill, kd_loss, kd_sweep, teacher_probs
from weightspace.ensembles.kd.one_to_one import PerturbConfig, distill_one_to_one
from weightspace.ensembles.latentbe import merge

__all__ = [
    "BatchEnsemble",
    "KDConfig",
    "KDResult",
    "PerturbConfig",
    "distill",
    "distill_one_to_one",
    "kd_loss",
    "kd_sweep",
    "merge",
    "teacher_probs",
    "tile",
    "untile",
]
