"""Optimisers over stacks of models with per-model hyper-parameters and an active mask.

Each member of a stack has its own learning rate and weight decay, and may be inactive at
a step (its epochs are over, or its task has no batch left in this epoch); an inactive
member's parameters, moments and step count stay untouched. The update rules are those of
:class:`torch.optim.Adam`, :class:`torch.optim.AdamW` and :class:`torch.optim.SGD`
(momentum, dampening 0, no Nesterov), written element-wise so that a stack of B models
trained together follows the same arithmetic as B models trained one by one.

The parameters are one flat tensor ``(B, D)`` (see :func:`weightspace.zoo.train.train_stack`),
so a step is a dozen large in-place kernels whatever the architecture; when the caller
knows that every member is active (the common case) the masking kernels are skipped.
"""

from __future__ import annotations

import torch

from weightspace.errors import InvalidParameterError

OPTIMIZERS = ("adam", "adamw", "sgd")


class StackedOptimizer:
    """Adam / AdamW / SGD over a flat parameter tensor ``(B, D)``.

    Parameters
    ----------
    param : Tensor (B, D)
        Leaf tensor updated in place.
    kind : {"adam", "adamw", "sgd"}
        Update rule.
    lr, weight_decay : Tensor (B,)
        Per-model hyper-parameters.
    betas, eps : Adam constants.
    momentum : float
        SGD momentum.
    """

    def __init__(
        self,
        param: torch.Tensor,
        kind: str,
        lr: torch.Tensor,
        weight_decay: torch.Tensor,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.9,
    ) -> None:
        if kind not in OPTIMIZERS:
            raise InvalidParameterError(f"unknown optimizer {kind!r}; choose one of {OPTIMIZERS}")
        self.param, self.kind, self.betas, self.eps, self.momentum = (
            param,
            kind,
            betas,
            eps,
            momentum,
        )
        self.lr = lr.to(param).reshape(-1, 1)
        self.wd = weight_decay.to(param).reshape(-1, 1)
        self.use_wd = bool((weight_decay != 0).any())  # one host sync, at construction
        self.step_count = torch.zeros(param.shape[0], 1, device=param.device, dtype=param.dtype)
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param) if kind != "sgd" else None

    @torch.no_grad()
    def step(
        self, grad: torch.Tensor, active: torch.Tensor | None, all_active: bool = False
    ) -> None:
        """One update of the members where ``active`` (BoolTensor (B,)) is True.

        ``all_active=True`` promises that every member is active (``active`` is ignored
        and may be None; the masking kernels are skipped).
        """
        act = None if all_active else active.to(self.param.dtype).reshape(-1, 1)
        self.step_count += 1 if act is None else act
        p = self.param
        if self.kind == "sgd":
            g = grad.add(p * self.wd) if self.use_wd else grad
            first = self.step_count == 1
            new = torch.where(first, g, self.exp_avg * self.momentum + g)
            if act is None:
                self.exp_avg.copy_(new)
                p.sub_(self.lr * new)
            else:
                self.exp_avg.copy_(torch.where(act.bool(), new, self.exp_avg))
                p.sub_((act * self.lr) * new)
            return
        b1, b2 = self.betas
        t = self.step_count.clamp(min=1)
        bc1 = 1 - b1**t
        bc2_sqrt = (1 - b2**t).sqrt()
        if self.kind == "adamw":
            if self.use_wd:
                p.mul_(1 - (self.lr * self.wd if act is None else act * self.lr * self.wd))
            g = grad
        else:
            g = grad.add(p * self.wd) if self.use_wd else grad
        m, v = self.exp_avg, self.exp_avg_sq
        if act is None:
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            step_size = self.lr / bc1
        else:
            keep = act.bool()
            m.copy_(torch.where(keep, m.lerp(g, 1 - b1), m))
            v.copy_(torch.where(keep, v * b2 + g * g * (1 - b2), v))
            step_size = act * self.lr / bc1
        denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
        p.sub_(m / denom * step_size)


def make_optimizer(
    params,
    kind: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """The per-model ``torch.optim`` optimiser of one name: the project's one switch.

    Parameters
    ----------
    params : iterable of Tensor
        Parameters to optimise.
    kind : {"adam", "adamw", "sgd"}
        Update rule (the same names as :class:`StackedOptimizer`).
    lr, weight_decay : float
    momentum : float
        SGD only.
    """
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise InvalidParameterError(f"unknown optimizer {kind!r}; choose one of {OPTIMIZERS}")
