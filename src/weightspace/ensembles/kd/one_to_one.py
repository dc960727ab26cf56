"""One-to-one distillation of a deep ensemble into a BatchEnsemble (Mariet et al. [1]_).

LatentBE [2]_, eq. (4): member ``m`` of the BatchEnsemble student learns from teacher
``m`` only,

.. math::

    \\min \\sum_{m=1}^{M} \\mathcal{H}\\big[\\mathcal{T}_m(x), \\mathcal{S}_m(x)\\big],

here as the mean over members of Hinton's loss (:func:`~weightspace.ensembles.kd.kd_loss`;
the authors use temperature 4 and ``alpha = 1``, i.e. no label term). Details the poster
leaves out follow the authors' code (``cs-giung/distill-latentbe``):

- **fast weights**: their gradients are scaled by ``M`` (the loss averages over the M
  blocks of the tiled batch, so each fast weight sees 1/M of it) and weight decay pulls
  them towards 1, not 0, with coefficient ``weight_decay / M``; the shared (slow) weights
  get the optimiser's ordinary weight decay. The x M scaling matters for SGD (the
  authors' optimiser); Adam is invariant to a gradient's scale, so with Adam it only
  changes the relative weight of the decay term;
- **diversifying perturbations** (eq. 7-8, :mod:`weightspace.ensembles.perturb`): one
  input step per minibatch (ODS, ConfODS or TDiv−SDiv); the KD term is computed on the
  perturbed batch with the teachers queried there, the label term (weight ``1 - alpha``)
  on the clean batch.

The training loop itself is :func:`~weightspace.ensembles.kd.loop.fit_student`, the
same loop as plain KD: with ``M = 1``, frozen fast weights and no perturbation, this is
exactly :func:`~weightspace.ensembles.kd.distill` (tested).

References
----------
.. [1] Z. Mariet, R. Jenatton, F. Wenzel, D. Tran. "Distilling Ensembles Improves
   Uncertainty Estimates." AABI 2021.
.. [2] G. Nam, H. Lee, B. Heo, J. Lee. "Improving Ensemble Distillation With Weight
   Averaging and Diversifying Perturbation." ICML 2022
   (``papers/latentbe_ensemble_distillation_weight_averaging.txt``, eq. 4, 7, 8).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from weightspace.checks import positive_number
from weightspace.data.base import Split
from weightspace.ensembles import perturb
from weightspace.ensembles.batchensemble import BatchEnsemble
from weightspace.ensembles.kd.config import KDConfig, KDResult, _check_config, _check_split
from weightspace.ensembles.kd.loop import StudentTask, fit_student
from weightspace.ensembles.kd.loss import _as_teacher_list, kd_loss, teacher_probs
from weightspace.errors import InvalidParameterError, NonFiniteWeightsError, ShapeError
from weightspace.metrics import ensemble_log_probs

__all__ = ["PERTURBATIONS", "PerturbConfig", "distill_one_to_one", "member_teacher_probs"]

logger = logging.getLogger(__name__)

PERTURBATIONS: tuple[str, ...] = ("none", "ods", "confods", "tdiv_sdiv")
"""Perturbation kinds: none, ODS (eq. 7), ConfODS, TDiv−SDiv (eq. 8)."""


@dataclass(frozen=True)
class PerturbConfig:
    """Which input perturbation one-to-one distillation applies, and how far.

    Parameters
    ----------
    kind : str
        One of :data:`PERTURBATIONS`.
    step : float
        Per-coordinate RMS of the step in units of the training inputs' range
        (``max - min``): each example moves by ``step * range * sqrt(D)`` in L2 norm and
        is clipped to ``[min, max]``. ``1/255`` is the authors' ``sqrt(D)/255`` for images
        in ``[0, 1]``.
    seed : int
        Seed of the perturbations' own generator (member pairs, ODS directions).
    """

    kind: str = "none"
    step: float = 1.0 / 255.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in PERTURBATIONS:
            raise InvalidParameterError(
                f"perturbation kind must be one of {list(PERTURBATIONS)}, got {self.kind!r}"
            )
        hint = "1/255 is the authors' step for images in [0, 1]"
        positive_number("perturbation step", self.step, hint)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidParameterError(
                f"perturbation seed must be an integer >= 0, got {self.seed!r}"
            )


@torch.no_grad()
def member_teacher_probs(teachers: Sequence[nn.Module], x: Tensor, temperature: float) -> Tensor:
    """Each teacher's softened probabilities, ``(M, N, C)`` on ``x.device``."""
    return torch.stack([teacher_probs(t, x, temperature) for t in teachers])


def _check_teachers(be: object, teachers: Sequence[nn.Module]) -> list[nn.Module]:
    """The teachers as a list, one per member of ``be``; else raise."""
    if not isinstance(be, BatchEnsemble):
        raise InvalidParameterError(
            f"student must be a BatchEnsemble, got {type(be).__name__}; wrap the student "
            "architecture with weightspace.ensembles.batchensemble.BatchEnsemble(module, m)"
        )
    models = _as_teacher_list(teachers)
    if len(models) != be.m:
        raise ShapeError(
            f"one-to-one distillation needs one teacher per member: {len(models)} teachers "
            f"for a BatchEnsemble of M = {be.m}; build the student with m = {len(models)}"
        )
    return models


def _check_targets(be: BatchEnsemble, probs: Tensor, train: Split, batch_size: int) -> None:
    """Teachers' ``(M, N, C)`` probabilities finite and matching the student's classes."""
    if not bool(torch.isfinite(probs).all()):
        raise NonFiniteWeightsError(
            "the teachers' probabilities contain NaN or infinity; check the teachers' weights"
        )
    out = be.member_logits(train.x[:batch_size].to(probs.device))
    if out.ndim != 3 or out.shape[-1] != probs.shape[-1]:
        raise ShapeError(
            f"the teachers output {probs.shape[-1]} classes but the student's members output "
            f"logits of shape {tuple(out.shape[1:])}; distillation needs the same classes"
        )


def _perturber(
    config: PerturbConfig, teachers: list[nn.Module], be: BatchEnsemble, x: Tensor
) -> Callable[[Tensor], Tensor] | None:
    """``x_batch -> perturbed batch`` for ``config``, or None for ``kind = "none"``."""
    if config.kind == "none":
        return None
    lo, hi = float(x.min()), float(x.max())
    step = config.step * max(hi - lo, 1e-12)
    gen = torch.Generator().manual_seed(config.seed)
    fns = {"ods": perturb.ods, "confods": perturb.conf_ods}
    if config.kind in fns:
        fn = fns[config.kind]
        return lambda xb: fn(teachers, xb, step, clip=(lo, hi), generator=gen)
    return lambda xb: perturb.tdiv_sdiv(teachers, be, xb, step, clip=(lo, hi), generator=gen)


def _fast_weight_rule(be: BatchEnsemble, weight_decay: float) -> Callable[[], None]:
    """Gradient rule of the fast weights: ``g <- M g + (wd / M) (p - 1)``."""
    m = be.m

    def apply() -> None:
        with torch.no_grad():
            for p in be.fast_parameters():
                if p.grad is not None:
                    p.grad.mul_(m)
                    if weight_decay:
                        p.grad.add_(p - 1.0, alpha=weight_decay / m)

    return apply


def one_to_one_task(
    be: BatchEnsemble,
    teachers: list[nn.Module],
    data: tuple[Tensor, Tensor, Tensor],
    config: KDConfig,
    perturbation: PerturbConfig,
) -> StudentTask:
    """The :class:`~weightspace.ensembles.kd.loop.StudentTask` of one-to-one KD.

    ``data = (x, y, probs)`` with ``probs`` ``(M, N, C)``: teacher ``m``'s probabilities
    softened at ``config.temperature`` on the clean inputs.
    """
    x, y, probs = data
    m, t, a = be.m, config.temperature, config.alpha
    shift = _perturber(perturbation, teachers, be, x)

    def batch_loss(idx: Tensor) -> Tensor:
        xb, yb = x[idx], y[idx]
        labels = yb.repeat(m)
        if shift is None:
            s = be.member_logits(xb).flatten(0, 1)
            return kd_loss(s, probs[:, idx].flatten(0, 1), labels, t, a)
        xp = shift(xb).detach()
        tp = member_teacher_probs(teachers, xp, t).flatten(0, 1)
        loss = a * kd_loss(be.member_logits(xp).flatten(0, 1), tp, labels, t, 1.0)
        if a < 1.0:
            clean = be.member_logits(xb).flatten(0, 1)
            loss = loss + (1.0 - a) * kd_loss(clean, tp, labels, t, 0.0)
        return loss

    fast_ids = {id(p) for p in be.fast_parameters()}
    slow = [p for p in be.parameters() if id(p) not in fast_ids and p.requires_grad]
    fast = [p for p in be.fast_parameters() if p.requires_grad]
    groups = [{"params": slow}] + ([{"params": fast, "weight_decay": 0.0}] if fast else [])
    return StudentTask(
        model=be,
        batch_loss=batch_loss,
        predict=lambda xb: ensemble_log_probs(be.member_logits(xb)),
        n_train=x.shape[0],
        param_groups=groups,
        after_backward=_fast_weight_rule(be, config.weight_decay),
    )


def distill_one_to_one(
    student: BatchEnsemble,
    teachers: Sequence[nn.Module],
    train: Split,
    config: KDConfig,
    val: Split | None = None,
    perturbation: PerturbConfig | None = None,
    progress: bool = False,
) -> KDResult:
    """Distil M teachers one-to-one into (a copy of) a BatchEnsemble of M members.

    Parameters
    ----------
    student : BatchEnsemble
        Student of ``M`` members (not modified); trains on its parameters' device.
    teachers : sequence of nn.Module
        ``M`` frozen teachers; teacher ``m`` teaches member ``m``.
    train : Split
        Training inputs ``(N, *in)`` and labels ``(N,)``.
    config : KDConfig
        Optimisation and loss (the authors: ``temperature = 4``, ``alpha = 1``).
    val : Split, optional
        Selects the epoch with the best accuracy of the members' mean probabilities.
    perturbation : PerturbConfig, optional
        Input perturbation (default none).
    progress : bool
        Show a tqdm bar over epochs.

    Returns
    -------
    KDResult
        ``model`` is the trained BatchEnsemble (eval mode).

    Raises
    ------
    InvalidParameterError
        A student that is not a BatchEnsemble, or a bad config.
    ShapeError
        Teacher count different from ``M``, or class counts that differ.
    NonFiniteWeightsError
        NaN/inf in the teachers' outputs, the loss or the weights.
    """
    config = _check_config(config)
    train = _check_split(train, "train")
    val = _check_split(val, "val") if val is not None else None
    perturbation = perturbation if perturbation is not None else PerturbConfig()
    if not isinstance(perturbation, PerturbConfig):
        raise InvalidParameterError(
            f"perturbation must be a PerturbConfig, got {type(perturbation).__name__}"
        )
    models = _check_teachers(student, teachers)
    t0 = time.perf_counter()
    be = copy.deepcopy(student)
    device = next(be.parameters()).device
    x, y = train.x.to(device), train.y.to(device)
    probs = member_teacher_probs(models, x, config.temperature)
    _check_targets(be, probs, train, config.batch_size)
    task = one_to_one_task(be, models, (x, y, probs), config, perturbation)
    selection = fit_student(task, config, val, progress, f"one-to-one KD ({perturbation.kind})")
    seconds = time.perf_counter() - t0
    logger.info(
        "one-to-one KD (M=%d, perturbation=%s) in %.1fs; best epoch %d",
        be.m,
        perturbation.kind,
        seconds,
        selection.best_epoch,
    )
    return KDResult(be, selection.history, selection.best_epoch, seconds)
