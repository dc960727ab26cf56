"""Exponential moving average of a model's weights, as LitEma in latent diffusion.

D2NWG keeps an EMA copy of the diffusion model ("model_ema | LitEma" in the parameter
tables of ``d2nwg_diffusion_weight_generation_review_discussion.txt``), the
``ldm.modules.ema.LitEma`` of latent diffusion. After the ``n``-th update
(``n = 1, 2, ...``) each shadow parameter is

    ``s <- d_n s + (1 - d_n) p``  with  ``d_n = min(decay, (1 + n) / (10 + n))``

(the warm-up makes early averages follow the model closely). Only parameters with
``requires_grad`` are averaged; frozen parameters and buffers are copied as they are.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from weightspace.errors import CheckpointMismatchError, InvalidParameterError


class EMA:
    """Shadow copy of ``model``'s weights, updated by :meth:`update`.

    Parameters
    ----------
    model : nn.Module
        Its current weights initialise the shadow (on the same device).
    decay : float
        Target decay in ``[0, 1]``.
    use_warmup : bool
        Apply LitEma's ``min(decay, (1 + n) / (10 + n))`` warm-up.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, use_warmup: bool = True) -> None:
        if not 0.0 <= decay <= 1.0:
            raise InvalidParameterError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.use_warmup = use_warmup
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad
        }
        self.copied: dict[str, torch.Tensor] = self._copied_of(model)
        self._backup: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _copied_of(model: nn.Module) -> dict[str, torch.Tensor]:
        frozen = {k: p.detach().clone() for k, p in model.named_parameters() if not p.requires_grad}
        return {**frozen, **{k: b.detach().clone() for k, b in model.named_buffers()}}

    def _check(self, model: nn.Module) -> tuple[dict, dict]:
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        trainable = {k for k, p in params.items() if p.requires_grad}
        known = set(self.shadow) | set(self.copied)
        if trainable != set(self.shadow) or set(params) | set(buffers) != known:
            raise CheckpointMismatchError(
                "EMA was built for a model with different parameters / buffers (or a different "
                "requires_grad set); build a new EMA for this model"
            )
        return params, buffers

    def current_decay(self) -> float:
        """Decay the next :meth:`update` will use."""
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n)) if self.use_warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``shadow <- d shadow + (1 - d) param`` for trainable params; copy the rest."""
        params, buffers = self._check(model)
        d = self.current_decay()
        self.num_updates += 1
        if self.shadow:  # one multi-tensor kernel on CUDA instead of one per parameter
            keys = list(self.shadow)
            torch._foreach_lerp_(
                [self.shadow[k] for k in keys], [params[k].detach() for k in keys], 1.0 - d
            )
        for k, v in self.copied.items():
            v.copy_(params[k] if k in params else buffers[k])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s weights and buffers with the averaged ones."""
        params, buffers = self._check(model)
        for k, v in self.shadow.items():
            params[k].copy_(v)
        for k, v in self.copied.items():
            (params[k] if k in params else buffers[k]).copy_(v)

    @torch.no_grad()
    def store(self, model: nn.Module) -> None:
        """Remember ``model``'s current parameters and buffers (for :meth:`restore`)."""
        params, buffers = self._check(model)
        self._backup = {k: v.detach().clone() for k, v in {**params, **buffers}.items()}

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Put back the parameters and buffers saved by :meth:`store`."""
        if self._backup is None:
            raise InvalidParameterError("EMA.restore called without a previous store")
        params, buffers = self._check(model)
        for k, v in self._backup.items():
            (params[k] if k in params else buffers[k]).copy_(v)
        self._backup = None

    @contextmanager
    def average_parameters(self, model: nn.Module) -> Iterator[nn.Module]:
        """``with ema.average_parameters(model): ...`` runs ``model`` with EMA weights.

        Everything (parameters and buffers) is restored on exit.
        """
        self.store(model)
        self.copy_to(model)
        try:
            yield model
        finally:
            self.restore(model)

    def to(self, device: torch.device | str) -> EMA:
        """Move the shadow to ``device`` (in place); returns ``self``."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        self.copied = {k: v.to(device) for k, v in self.copied.items()}
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``{name: tensor}`` (safetensors-ready): ``shadow.*``, ``copied.*``,
        ``decay`` and ``num_updates``."""
        out = {f"shadow.{k}": v.clone() for k, v in self.shadow.items()}
        out.update({f"copied.{k}": v.clone() for k, v in self.copied.items()})
        out["decay"] = torch.tensor(self.decay, dtype=torch.float64)
        out["num_updates"] = torch.tensor(self.num_updates, dtype=torch.long)
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_dict`; the names must match this EMA's model."""
        shadow = {k[7:]: v for k, v in state.items() if k.startswith("shadow.")}
        copied = {k[7:]: v for k, v in state.items() if k.startswith("copied.")}
        if set(shadow) != set(self.shadow) or set(copied) != set(self.copied):
            raise CheckpointMismatchError(
                "EMA state does not match this model's parameters/buffers: it was saved for "
                "another architecture"
            )
        for k, v in shadow.items():
            self.shadow[k].copy_(v)
        for k, v in copied.items():
            self.copied[k].copy_(v)
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
