"""Knowledge-distillation loss (Hinton et al. [1]_) and the teachers' soft targets.

.. math::

    \\mathcal{L} = \\alpha\\, T^2\\, \\mathrm{KL}\\big(p^T_{\\text{teacher}} \\,\\|\\,
    \\mathrm{softmax}(z_{\\text{student}} / T)\\big)
    + (1 - \\alpha)\\, \\mathrm{CE}(z_{\\text{student}}, y),

where :math:`p^T_{\\text{teacher}}` (:func:`teacher_probs`) are the teacher's
probabilities softened by the temperature :math:`T` (for several teachers, the mean of
their softened probabilities) and the factor :math:`T^2` keeps the gradient of the soft
term on the same scale as the hard term when :math:`T` changes (Sec. 2 of [1]_).

References
----------
.. [1] G. Hinton, O. Vinyals, J. Dean. "Distilling the Knowledge in a Neural Network."
   NIPS Deep Learning Workshop, 2015. arXiv:1503.02531.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.checks import positive_number
from weightspace.device import module_device
from weightspace.errors import InvalidParameterError, ShapeError

__all__ = ["kd_loss", "teacher_probs"]


def _check_temperature(temperature: object) -> float:
    """Return ``temperature`` as a float if it is a finite number ``> 0``, else raise."""
    return positive_number(
        "temperature", temperature, "T = 1 is the plain softmax, Hinton et al. use T in [1, 20]"
    )


def _check_alpha(alpha: object) -> float:
    """Return ``alpha`` as a float if it is a finite number in ``[0, 1]``, else raise."""
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, int | float)
        or not math.isfinite(alpha)
        or not 0.0 <= alpha <= 1.0
    ):
        raise InvalidParameterError(
            f"alpha (weight of the distillation term) must lie in [0, 1], got {alpha!r}; "
            "alpha = 0 is plain cross-entropy, alpha = 1 pure distillation"
        )
    return float(alpha)


def _as_teacher_list(
    teachers: nn.Module | Sequence[nn.Module], allow_single: bool = True
) -> list[nn.Module]:
    """One teacher (if ``allow_single``) or a non-empty sequence of them as a list, else raise."""
    if allow_single and isinstance(teachers, nn.Module):
        return [teachers]
    if isinstance(teachers, str | nn.Module) or not isinstance(teachers, Sequence):
        what = "an nn.Module or a sequence of them" if allow_single else "a sequence of nn.Module"
        raise InvalidParameterError(
            f"teachers must be {what}, got {type(teachers).__name__}; wrap a single teacher "
            "in a list"
        )
    out = list(teachers)
    if not out:
        raise InvalidParameterError("teachers is empty; pass at least one teacher model")
    for i, t in enumerate(out):
        if not isinstance(t, nn.Module):
            raise InvalidParameterError(
                f"teachers[{i}] must be an nn.Module, got {type(t).__name__}"
            )
    return out


def kd_loss(
    student_logits: Tensor,
    teacher_probs: Tensor,
    labels: Tensor,
    temperature: float,
    alpha: float,
) -> Tensor:
    """Hinton et al.'s distillation loss, averaged over the batch.

    ``alpha * T**2 * KL(p_teacher || softmax(student / T)) + (1 - alpha) * CE(student, y)``.

    Parameters
    ----------
    student_logits : Tensor, shape (B, C)
        Raw (unsoftened) student logits.
    teacher_probs : Tensor, shape (B, C)
        Teacher probabilities already softened at ``temperature`` (see
        :func:`teacher_probs`); rows sum to 1.
    labels : Tensor, shape (B,), int64
        Hard labels in ``[0, C)``.
    temperature : float
        Softmax temperature ``T > 0``.
    alpha : float
        Weight of the distillation term, in ``[0, 1]``.

    Returns
    -------
    Tensor, shape ()
        The loss; differentiable with respect to ``student_logits``.

    Raises
    ------
    InvalidParameterError
        If ``temperature <= 0`` or ``alpha`` is outside ``[0, 1]``.
    ShapeError
        If the shapes disagree.
    """
    temperature = _check_temperature(temperature)
    alpha = _check_alpha(alpha)
    if student_logits.ndim != 2:
        raise ShapeError(
            f"student_logits must have shape (B, C), got {tuple(student_logits.shape)}"
        )
    if teacher_probs.shape != student_logits.shape:
        raise ShapeError(
            f"teacher_probs must have the shape of student_logits "
            f"{tuple(student_logits.shape)}, got {tuple(teacher_probs.shape)}; the teacher "
            "and the student must have the same number of classes"
        )
    if labels.shape != student_logits.shape[:1]:
        raise ShapeError(
            f"labels must have shape ({student_logits.shape[0]},), got {tuple(labels.shape)}"
        )
    loss = student_logits.new_zeros(())
    if alpha > 0.0:
        log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
        # kl_div(input=log q, target=p) = sum p (log p - log q), with 0 log 0 = 0.
        kl = F.kl_div(log_p_student, teacher_probs.to(log_p_student.dtype), reduction="batchmean")
        loss = loss + alpha * temperature**2 * kl
    if alpha < 1.0:
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, labels)
    return loss


@torch.no_grad()
def teacher_probs(
    teachers: nn.Module | Sequence[nn.Module],
    x: Tensor,
    temperature: float,
    batch_size: int = 1024,
) -> Tensor:
    """Mean over teachers of their softened probabilities ``softmax(logits / T)``.

    Teachers run in eval mode under ``no_grad``, in batches, each on its own device; their
    train/eval mode is restored afterwards.

    Parameters
    ----------
    teachers : nn.Module or sequence of nn.Module
        One or more teachers mapping ``(B, *input_shape)`` to ``(B, C)`` logits.
    x : Tensor, shape (N, *input_shape)
        Inputs.
    temperature : float
        Softmax temperature ``T > 0``.
    batch_size : int
        Samples per forward pass.

    Returns
    -------
    Tensor, shape (N, C), float32, on ``x.device``
        Rows sum to 1.

    Raises
    ------
    InvalidParameterError
        On an invalid temperature, batch size or teacher list.
    ShapeError
        If a teacher does not output ``(B, C)`` logits, or teachers disagree on ``C``.
    """
    temperature = _check_temperature(temperature)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidParameterError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    models = _as_teacher_list(teachers)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ShapeError(f"x must have shape (N, *input_shape) with N >= 1, got {tuple(x.shape)}")
    was_training = [m.training for m in models]
    total: Tensor | None = None
    try:
        for i, model in enumerate(models):
            model.eval()
            dev = module_device(model, x.device)
            chunks = []
            for start in range(0, x.shape[0], batch_size):
                logits = model(x[start : start + batch_size].to(dev))
                if logits.ndim != 2:
                    raise ShapeError(
                        f"teacher {i} must output (B, C) logits, got {tuple(logits.shape)}"
                    )
                chunks.append(torch.softmax(logits.float() / temperature, dim=-1).to(x.device))
            probs = torch.cat(chunks)
            if total is None:
                total = probs
            elif probs.shape[1] != total.shape[1]:
                raise ShapeError(
                    f"teachers disagree on the number of classes: teacher 0 has "
                    f"{total.shape[1]}, teacher {i} has {probs.shape[1]}"
                )
            else:
                total = total + probs
    finally:
        for model, mode in zip(models, was_training, strict=True):
            model.train(mode)
    assert total is not None
    return total / len(models)
