"""Input perturbations that diversify the distillation inputs (Nam et al. [1]_, eqs. 7-8).

Every perturbation is one step ``x' = clip(x + eps)`` along a direction ``g`` (a gradient
with respect to the input): ``eps_n`` is ``g_n`` rescaled per example to L2 norm
``step * sqrt(D)`` (times the teacher's confidence for :func:`conf_ods`), D the number
of input coordinates of one example (:func:`normalized_step`). With ``step = 1/255`` and
inputs in ``[0, 1]`` this is the authors' ``sqrt(D) / 255``. A zero gradient gives a zero
step.

:func:`ods`
    Output Diversified Sampling (Tashiro et al. [2]_; eq. 7 of [1]_): one random teacher
    ``T`` and a random guidance vector ``w_n ~ U(-1, 1)^C`` per example; ``g`` is the
    gradient of ``sum_n w_n · softmax(T(x_n))``.
:func:`conf_ods`
    ConfODS (Nam et al. [3]_): the ODS direction with the step of example ``n`` scaled by
    the teacher's (detached) top softmax probability on ``x_n``, so that examples the
    teacher is unsure about move less (per-example norm ``step * sqrt(D) * conf_n``).
    The scaling is applied to the normalised step, as in the authors' code
    (``c_ods_l2``): scaling the guidance vector ``w_n`` by a per-example factor before
    the per-example normalisation would cancel out and give plain ODS.
:func:`tdiv_sdiv`
    Eq. 8 of [1]_: for a random pair ``i != j`` of teachers and of BatchEnsemble student
    members, ``g`` is the gradient of ``TDiv(x) - SDiv(x)``, with
    ``TDiv = -sum_n sum_c stopgrad(p_Ti(x_n))_c log p_Tj(x_n)_c`` (the cross-entropy
    between teachers i and j, temperature 1) and SDiv the same for student members i and j:
    the inputs move where the teachers disagree and the student's members agree.

Models run in eval mode (their modes are restored afterwards) on ``x``'s device; only the
gradient with respect to the input is computed (``torch.autograd.grad``), so no
parameter's ``.grad`` changes. Random draws use ``generator`` when given (no global RNG),
on the generator's device, and are then moved to ``x``'s device.

References
----------
.. [1] G. Nam, H. Lee, B. Heo, J. Lee. "Improving Ensemble Distillation With Weight
   Averaging and Diversifying Perturbation." ICML 2022. arXiv:2206.15047.
.. [2] Y. Tashiro, Y. Song, S. Ermon. "Diversity Can Be Transferred: Output
   Diversification for White- and Black-box Attacks." NeurIPS 2020. arXiv:2003.06878.
.. [3] G. Nam, J. Yoon, Y. Lee, J. Lee. "Diversity Matters When Learning From Ensembles."
   NeurIPS 2021. arXiv:2110.14149.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.checks import positive_number
from weightspace.ensembles.batchensemble import BatchEnsemble
from weightspace.ensembles.kd.loss import _as_teacher_list
from weightspace.errors import InvalidParameterError, ShapeError

__all__ = ["conf_ods", "normalized_step", "ods", "tdiv_sdiv"]


# --------------------------------------------------------------------------- validation
def _check_step(step: object) -> float:
    """Return ``step`` as a float if it is a finite number ``> 0``, else raise."""
    return positive_number(
        "step",
        step,
        "the perturbation moves each example by step * sqrt(D) in L2 norm, e.g. step = "
        "1/255 for inputs in [0, 1]",
    )


def _check_clip(clip: object) -> tuple[float, float] | None:
    """Return ``clip`` as ``(low, high)`` floats with ``low < high``, or None, else raise."""
    if clip is None:
        return None
    ok = (
        isinstance(clip, tuple | list)
        and len(clip) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in clip)
        and not any(math.isnan(v) for v in clip)
        and clip[0] < clip[1]
    )
    if not ok:
        raise InvalidParameterError(
            f"clip must be None or a pair (low, high) of numbers with low < high, got "
            f"{clip!r}; e.g. clip = (0.0, 1.0) for inputs scaled to [0, 1]"
        )
    return float(clip[0]), float(clip[1])


def _check_x(x: object) -> Tensor:
    """Raise unless ``x`` is a finite floating-point batch ``(B, *in)`` with ``B >= 1``."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise InvalidParameterError(
            f"x must be a floating-point tensor (B, *input_shape), got {kind}; "
            "convert inputs with x.float() before perturbing them"
        )
    if x.ndim < 1 or x.shape[0] == 0:
        raise ShapeError(f"x must have shape (B, *input_shape) with B >= 1, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InvalidParameterError(
            "x contains NaN or infinity; perturbations need finite inputs (check the data "
            "pipeline and any earlier perturbation)"
        )
    return x


def _check_teachers(teachers: object) -> list[nn.Module]:
    """A non-empty sequence of modules as a list, else raise (one check with KD's)."""
    return _as_teacher_list(teachers, allow_single=False)  # type: ignore[arg-type]


def _check_logits(logits: Tensor, batch: int, who: str) -> Tensor:
    if logits.ndim != 2 or logits.shape[0] != batch:
        raise ShapeError(
            f"{who} must output logits (B, C) = ({batch}, C), got {tuple(logits.shape)}"
        )
    return logits


# --------------------------------------------------------------------------- helpers
@contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode and restore every submodule's own mode afterwards."""
    modes = [(mod, mod.training) for model in models for mod in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for mod, mode in modes:
            mod.training = mode


def _randint(high: int, generator: torch.Generator | None) -> int:
    """One integer in ``[0, high)`` drawn with ``generator`` (global RNG if None)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(high, (1,), generator=generator, device=device).item())


def normalized_step(grad: Tensor, step: float) -> Tensor:
    """Rescale each example's direction to L2 norm ``step * sqrt(D)``.

    Parameters
    ----------
    grad : Tensor, shape (B, *D)
        One direction per example (e.g. an input gradient).
    step : float
        Step per input coordinate, finite and ``> 0``.

    Returns
    -------
    Tensor, shape (B, *D)
        ``grad_n * step * sqrt(D) / ||grad_n||_2``, and zero where ``grad_n`` is zero.
        ``D`` is the number of coordinates of one example (``prod(*D)``).
    """
    step = _check_step(step)
    if grad.ndim < 1 or grad.shape[0] == 0:
        raise ShapeError(f"grad must have shape (B, *D) with B >= 1, got {tuple(grad.shape)}")
    flat = grad.reshape(grad.shape[0], -1)
    target = step * math.sqrt(flat.shape[1])
    norms = flat.norm(dim=1, keepdim=True)
    nonzero = norms > 0
    factor = torch.where(nonzero, target / torch.where(nonzero, norms, 1.0), 0.0)
    return (flat * factor).reshape(grad.shape)


def _apply_step(
    x: Tensor,
    direction: Tensor | None,
    step: float,
    clip: tuple[float, float] | None,
    name: str,
    scale: Tensor | None = None,
) -> Tensor:
    """``clip(x + scale_n * normalized_step(direction))``, checked finite.

    ``direction`` None is a zero direction; ``scale`` (B,) multiplies each example's step.
    """
    if direction is None:
        direction = torch.zeros_like(x)
    eps = normalized_step(direction, step)
    if scale is not None:
        eps = eps * scale.to(eps.dtype).reshape(-1, *([1] * (eps.ndim - 1)))
    out = x + eps
    if clip is not None:
        out = out.clamp(clip[0], clip[1])
    if not torch.isfinite(out).all():
        raise InvalidParameterError(
            f"the {name} perturbation produced NaN or infinity (step={step!r}, check the "
            "models' outputs and the step size)"
        )
    return out.detach()


def _input_grad(objective: Tensor, x: Tensor) -> Tensor | None:
    """Gradient of a scalar with respect to ``x`` only (no parameter's ``.grad`` changes)."""
    (grad,) = torch.autograd.grad(objective, [x], allow_unused=True)
    return grad


def _ods_like(
    teachers: Sequence[nn.Module],
    x: Tensor,
    step: float,
    clip: tuple[float, float] | None,
    generator: torch.Generator | None,
    confidence_weighted: bool,
    name: str,
) -> Tensor:
    """Shared body of :func:`ods` and :func:`conf_ods`."""
    models = _check_teachers(teachers)
    x = _check_x(x)
    step = _check_step(step)
    clip = _check_clip(clip)
    teacher = models[_randint(len(models), generator)]
    x_in = x.detach().clone().requires_grad_(True)
    with _eval_mode(teacher), torch.enable_grad():
        probs = torch.softmax(_check_logits(teacher(x_in), x.shape[0], "the teacher"), dim=-1)
        draw_device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(probs.shape, generator=generator, dtype=probs.dtype, device=draw_device)
        w = (2.0 * u - 1.0).to(probs.device)
        grad = _input_grad((w * probs).sum(), x_in)
    scale = probs.detach().amax(dim=-1) if confidence_weighted else None
    return _apply_step(x, grad, step, clip, name, scale)


# --------------------------------------------------------------------------- public API
def ods(
    teachers: Sequence[nn.Module],
    x: Tensor,
    step: float,
    *,
    clip: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Output Diversified Sampling: one step along a random direction in output space.

    Draws the teacher index ``k = torch.randint(K, (1,), generator=generator)``, then
    ``w = 2 * torch.rand((B, C), generator=generator, dtype=logits.dtype) - 1``, and
    ascends ``sum_n w_n · softmax(T_k(x_n))`` by one normalised step.

    Parameters
    ----------
    teachers : sequence of nn.Module
        K >= 1 models mapping ``(B, *in)`` to logits ``(B, C)``, on ``x``'s device.
    x : Tensor, shape (B, *in)
        Finite floating-point inputs.
    step : float
        Step per input coordinate (per-example L2 norm ``step * sqrt(D)``).
    clip : (float, float), optional
        Data bounds the result is clamped to.
    generator : torch.Generator, optional
        Source of the random teacher and guidance vectors.

    Returns
    -------
    Tensor, shape (B, *in)
        The perturbed inputs (detached).

    Raises
    ------
    InvalidParameterError
        On an invalid step, clip, teacher list or input, or a non-finite result.
    ShapeError
        If ``x`` has no examples or a teacher does not output ``(B, C)``.
    """
    return _ods_like(teachers, x, step, clip, generator, confidence_weighted=False, name="ods")


def conf_ods(
    teachers: Sequence[nn.Module],
    x: Tensor,
    step: float,
    *,
    clip: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """ConfODS: :func:`ods` with each example's step scaled by the teacher's confidence.

    Same draws, direction and arguments as :func:`ods`; the step of example ``n`` is
    multiplied by ``conf_n = max_c softmax(T_k(x_n))_c`` (detached), so its L2 norm is
    ``step * sqrt(D) * conf_n`` before clipping (as ``c_ods_l2`` in Nam et al.'s code).

    Returns
    -------
    Tensor, shape (B, *in)
        The perturbed inputs (detached).
    """
    return _ods_like(teachers, x, step, clip, generator, confidence_weighted=True, name="conf_ods")


def _cross_entropy_sum(target_logits: Tensor, logits: Tensor) -> Tensor:
    """``-sum_n sum_c stopgrad(softmax(target))_nc log_softmax(logits)_nc``."""
    p = torch.softmax(target_logits, dim=-1).detach()
    return -(p * F.log_softmax(logits, dim=-1)).sum()


def _check_pair(pair: object, m: int, generator: torch.Generator | None) -> tuple[int, int]:
    """The given pair ``(i, j)`` checked, or a uniformly drawn ordered pair ``i != j``."""
    if pair is None:
        i = _randint(m, generator)
        j = _randint(m - 1, generator)
        return i, j + (j >= i)
    ok = (
        isinstance(pair, tuple | list)
        and len(pair) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < m for v in pair)
        and pair[0] != pair[1]
    )
    if not ok:
        raise InvalidParameterError(
            f"pair must be two different member indices in [0, {m}), got {pair!r}"
        )
    return int(pair[0]), int(pair[1])


def tdiv_sdiv(
    teachers: Sequence[nn.Module],
    student: BatchEnsemble,
    x: Tensor,
    step: float,
    *,
    clip: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    pair: tuple[int, int] | None = None,
) -> Tensor:
    """One step along ``grad_x (TDiv(x) - SDiv(x))`` (eq. 8 of Nam et al.).

    For the pair ``(i, j)``: ``TDiv = -sum_n sum_c stopgrad(p_Ti(x_n))_c log p_Tj(x_n)_c``
    and ``SDiv`` the same with student members ``i`` and ``j``
    (``student.member_logits``); temperature 1, summed over the batch.

    Parameters
    ----------
    teachers : sequence of nn.Module
        M >= 2 teachers, teacher ``m`` paired with student member ``m``.
    student : BatchEnsemble
        The student, with ``student.m == M``.
    x : Tensor, shape (B, *in)
        Finite floating-point inputs.
    step : float
        Step per input coordinate (per-example L2 norm ``step * sqrt(D)``).
    clip : (float, float), optional
        Data bounds the result is clamped to.
    generator : torch.Generator, optional
        Draws the pair when ``pair`` is None: ``i = randint(M)``, ``j' = randint(M - 1)``,
        ``j = j' + (j' >= i)`` (uniform over ordered pairs with ``i != j``).
    pair : (int, int), optional
        Fixed member indices ``(i, j)``, ``i != j``.

    Returns
    -------
    Tensor, shape (B, *in)
        The perturbed inputs (detached).

    Raises
    ------
    InvalidParameterError
        If ``student`` is not a BatchEnsemble, fewer than two teachers are given, the
        teacher count differs from ``student.m``, on an invalid step, clip, pair or input,
        or a non-finite result.
    ShapeError
        If ``x`` has no examples or a model does not output ``(B, C)`` logits.
    """
    models = _check_teachers(teachers)
    if not isinstance(student, BatchEnsemble):
        raise InvalidParameterError(
            f"student must be a BatchEnsemble, got {type(student).__name__}; TDiv-SDiv "
            "needs the student's members (wrap it with BatchEnsemble(module, m))"
        )
    if len(models) < 2:
        raise InvalidParameterError(
            f"TDiv-SDiv needs at least 2 teachers (a diversity is between two members), "
            f"got {len(models)}; use ods or conf_ods for a single teacher"
        )
    if len(models) != student.m:
        raise InvalidParameterError(
            f"TDiv-SDiv pairs teacher m with student member m, but there are "
            f"{len(models)} teachers and the student has m={student.m} members; build the "
            "BatchEnsemble student with m = the number of teachers"
        )
    x = _check_x(x)
    step = _check_step(step)
    clip = _check_clip(clip)
    i, j = _check_pair(pair, student.m, generator)
    x_in = x.detach().clone().requires_grad_(True)
    b = x.shape[0]
    with _eval_mode(models[i], models[j], student), torch.enable_grad():
        t_i = _check_logits(models[i](x_in), b, f"teacher {i}")
        t_j = _check_logits(models[j](x_in), b, f"teacher {j}")
        s_all = student.member_logits(x_in)
        if s_all.ndim != 3:
            raise ShapeError(
                f"the student must output logits (B, C), got member logits {tuple(s_all.shape)}"
            )
        tdiv = _cross_entropy_sum(t_i, t_j)
        sdiv = _cross_entropy_sum(s_all[i], s_all[j])
        grad = _input_grad(tdiv - sdiv, x_in)
    return _apply_step(x, grad, step, clip, "tdiv_sdiv")
