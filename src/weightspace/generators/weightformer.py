"""WeightFormer: a Transformer that writes a student's weights from its teachers' weights.

Fei et al., "Meta-Ensemble Parameter Learning" (``papers/weightformer_meta_ensemble_
parameter_learning.txt``):

- **Tokens** (Sec. 3.1): every generated layer is a sequence of one token per output unit
  and teacher (:mod:`weightspace.generators.weight_tokens`); a *weight embedding
  dictionary* maps each layer's token width ``d_layer`` to ``d_model`` and back (one
  ``nn.Linear`` each way per layer), and each input token is the sum of its weight
  embedding, a relative-position embedding (the unit index within its teacher) and a
  teacher-id embedding.
- **Cross-layer flow** (Sec. 3.2): a ``[cross]`` token opens each layer's sequence; for
  the first layer it is a learnable vector, for layer ``l + 1`` it is the output state of
  layer ``l``'s ``[cross]`` (``cross_layer=False``, the ablation, uses the learnable
  vector for every layer). The student layer is read from the ``n_out`` output states
  that follow ``[cross]`` (the positions of teacher 0's tokens) and mapped back to
  ``d_layer``.
- **Weight cutoff** (Sec. 3.2, shift consistency): during training a random subset of the
  ``d_model`` feature dimensions of the input embeddings is zeroed (one subset per pass,
  shared by every token of the pass); :func:`shift_consistency` runs the teachers in
  their order and shifted by one model, each pass with its own cutoff, and returns the
  mean squared difference of the two predicted weights (eq. 3).

Generated tokens become a state dict through
:func:`~weightspace.generators.weight_tokens.detokenize`; :func:`student_logits` runs the
architecture on it with :func:`torch.func.functional_call`, so the classification loss
(eq. 4) back-propagates into the generator.

Two choices the paper leaves open (or does differently), both measured in the report:

- **Scale.** Each layer's tokens are divided by their standard deviation over the set
  (one number per set and layer, so order-invariant) before the embedding, and the
  read-out is multiplied by it: raw weights of different layers differ in scale by an
  order of magnitude, and the paper's ``D_w`` maps say nothing about it.
- **Residual read-out** (``residual=True``; not in the paper). The student is teacher 0's
  tokens plus ``gate_l`` times the generated correction, with one gate per layer starting
  at 0, so the untrained generator returns teacher 0 exactly. Read directly, as in the
  paper, the generator must first learn to write a working network from scratch; on the
  embedded zoo that ends below a single teacher (the ``no_residual`` ablation row). It
  also gives the L2 pre-training of Sec. 4.1 a learnable target: a KD student started
  from teacher 0 keeps teacher 0's unit order, one started at random does not.

:class:`LayerMLP` is the paper's MLP baseline (Sec. 4.1): per layer, an independent
network that sees only that layer's teacher weights, unit by unit. Its linear part starts
at ``[I/T, ..., I/T]`` (the teachers' mean) or at ``[I, 0, ..., 0]`` (teacher 0, to
match the residual read-out) and its hidden part at zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.generators.weight_tokens import (
    TokenLayout,
    concat_teachers,
    detokenize,
    teacher_index,
    unit_index,
)

__all__ = [
    "LayerMLP",
    "WeightFormer",
    "WeightFormerConfig",
    "shift_consistency",
    "student_logits",
    "student_state",
]


@dataclass(frozen=True)
class WeightFormerConfig:
    """Size and regularisation of :class:`WeightFormer`.

    Parameters
    ----------
    d_model, n_heads, n_blocks, d_ff : int
        Transformer encoder width, heads, stacked blocks and feed-forward width (the
        paper: 1280, 20, 24, 4096 for ImageNet-scale teachers).
    max_teachers : int
        Teacher-id embeddings: the model accepts 1 to ``max_teachers`` teachers.
    cutoff : float
        Share of the ``d_model`` feature dimensions zeroed per training pass, in [0, 1).
    cross_layer : bool
        Feed layer ``l``'s ``[cross]`` output into layer ``l + 1`` (False: the ablation).
    dropout : float
        Dropout inside the encoder blocks.
    residual : bool
        Read the student as teacher 0's tokens plus the generated correction (the output
        map starts at zero, so the untrained generator returns teacher 0). Not in the
        paper, which reads the weights directly; see the module docstring.
    """

    d_model: int = 64
    n_heads: int = 4
    n_blocks: int = 2
    d_ff: int = 128
    max_teachers: int = 3
    cutoff: float = 0.1
    cross_layer: bool = True
    dropout: float = 0.0
    residual: bool = False

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "n_blocks", "d_ff", "max_teachers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(f"{name} must be an integer >= 1, got {value!r}")
        if self.d_model % self.n_heads:
            raise InvalidParameterError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        for name in ("cutoff", "dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise InvalidParameterError(f"{name} must lie in [0, 1), got {value!r}")


def _check_teacher_tokens(layout: TokenLayout, tokens: Sequence[Tensor], max_t: int) -> int:
    """Teacher count ``T`` of per-layer tokens ``(B, T, n_out, width)``, checked."""
    if len(tokens) != layout.n_layers:
        raise ShapeError(
            f"expected tokens for {layout.n_layers} layers (the layout's), got {len(tokens)}"
        )
    n_t = tokens[0].shape[1] if tokens[0].ndim == 4 else -1
    for i, (tok, entry) in enumerate(zip(tokens, layout.layers, strict=True)):
        if (
            tok.ndim != 4
            or tok.shape[1] != n_t
            or tuple(tok.shape[2:])
            != (
                entry.n_out,
                entry.width,
            )
        ):
            raise ShapeError(
                f"tokens of layer {i} ({entry.layer!r}) must have shape (B, T, {entry.n_out}, "
                f"{entry.width}) with one T for all layers, got {tuple(tok.shape)}"
            )
    if not 1 <= n_t <= max_t:
        raise InvalidParameterError(
            f"this WeightFormer supports 1 to {max_t} teachers (max_teachers), got {n_t}; "
            f"pass between 1 and {max_t} teachers or train one with max_teachers >= {n_t}"
        )
    return n_t


class WeightFormer(nn.Module):
    """The weight generator ``g(w_1, ..., w_T; theta)`` of eq. (2).

    Parameters
    ----------
    layout : TokenLayout
        The teachers' (and the student's) architecture as tokens.
    config : WeightFormerConfig
    """

    def __init__(self, layout: TokenLayout, config: WeightFormerConfig | None = None) -> None:
        super().__init__()
        self.layout = layout
        self.config = config = config or WeightFormerConfig()
        d = config.d_model
        self.embed_in = nn.ModuleList([nn.Linear(w, d) for w in layout.widths])
        self.embed_out = nn.ModuleList([nn.Linear(d, w) for w in layout.widths])
        # residual read-out: student = teacher 0 + gate_l * correction, gates start at 0
        self.gate = nn.Parameter(torch.zeros(layout.n_layers)) if config.residual else None
        self.teacher_embedding = nn.Embedding(config.max_teachers, d)
        self.position_embedding = nn.Embedding(max(layout.n_outs), d)
        self.cross = nn.Parameter(torch.randn(d) * 0.02)
        block = nn.TransformerEncoderLayer(
            d, config.n_heads, config.d_ff, config.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(block, config.n_blocks, enable_nested_tensor=False)

    def _cutoff(self, h: Tensor, generator: torch.Generator | None) -> Tensor:
        """Zero ``cutoff * d_model`` random feature dimensions per sample (training only)."""
        k = round(self.config.cutoff * h.shape[-1])
        if not self.training or k == 0:
            return h
        scores = torch.rand(h.shape[0], h.shape[-1], generator=generator).to(h.device)
        dropped = scores.argsort(dim=-1)[:, :k]
        keep = torch.ones(h.shape[0], h.shape[-1], device=h.device, dtype=h.dtype)
        keep.scatter_(1, dropped.to(h.device), 0.0)
        return h * keep[:, None, :]

    def forward(
        self, tokens: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """Student tokens of every layer.

        Parameters
        ----------
        tokens : sequence of Tensor, ``tokens[l]`` of shape (B, T, n_out_l, width_l)
            ``B`` teacher sets of ``T`` teachers each (from
            :func:`~weightspace.generators.weight_tokens.tokenize`, with a leading ``B``).
        generator : torch.Generator, optional
            Source of the weight-cutoff draws (training mode only).

        Returns
        -------
        list of Tensor, ``out[l]`` of shape (B, n_out_l, width_l)
        """
        n_t = _check_teacher_tokens(self.layout, tokens, self.config.max_teachers)
        b = tokens[0].shape[0]
        start = self.cross.expand(b, 1, -1)
        cross, out = start, []
        for i, tok in enumerate(tokens):
            n_out = self.layout.layers[i].n_out
            dev = tok.device
            # one scale per set and layer (order-invariant): tokens in units of the std
            scale = tok.flatten(1).std(dim=1).clamp_min(1e-8)[:, None, None]  # (B, 1, 1)
            h = self.embed_in[i](concat_teachers(tok) / scale)  # (B, T * n_out, d)
            h = h + self.teacher_embedding(teacher_index(self.layout, i, n_t, dev))
            h = h + self.position_embedding(unit_index(self.layout, i, n_t, dev))
            y = self.encoder(torch.cat([cross, self._cutoff(h, generator)], dim=1))
            cross = y[:, :1] if self.config.cross_layer else start
            read = self.embed_out[i](y[:, 1 : 1 + n_out]) * scale
            out.append(tok[:, 0] + self.gate[i] * read if self.gate is not None else read)
        return out


class LayerMLP(nn.Module):
    """The MLP baseline: per layer, ``y_o = A [w_1,o; ...; w_T,o] + MLP([...])``.

    Each unit's student token is computed from the same unit's tokens of the ``T``
    teachers of that layer only (no other layer, no attention). The MLP's output layer
    starts at zero and ``A`` at ``[I/T, ..., I/T]`` (``init="mean"``: the untrained
    baseline returns the element-wise mean of the teachers) or at ``[I, 0, ..., 0]``
    (``init="first"``: it returns teacher 0, like WeightFormer's residual read-out).

    Parameters
    ----------
    layout : TokenLayout
    n_teachers : int
    hidden : int
        Hidden width of each layer's MLP.
    init : {"mean", "first"}
    """

    def __init__(
        self, layout: TokenLayout, n_teachers: int, hidden: int = 64, init: str = "mean"
    ) -> None:
        super().__init__()
        if init not in ("mean", "first"):
            raise InvalidParameterError(f"init must be 'mean' or 'first', got {init!r}")
        self.layout, self.n_teachers = layout, int(n_teachers)
        self.mix = nn.ModuleList()
        self.mlp = nn.ModuleList()
        for w in layout.widths:
            mix = nn.Linear(n_teachers * w, w, bias=False)
            start = torch.zeros(w, n_teachers * w)
            if init == "mean":
                start.copy_(torch.eye(w).repeat(1, n_teachers) / n_teachers)
            else:
                start[:, :w] = torch.eye(w)
            with torch.no_grad():
                mix.weight.copy_(start)
            mlp = nn.Sequential(nn.Linear(n_teachers * w, hidden), nn.ReLU(), nn.Linear(hidden, w))
            nn.init.zeros_(mlp[-1].weight)
            nn.init.zeros_(mlp[-1].bias)
            self.mix.append(mix)
            self.mlp.append(mlp)

    def forward(
        self, tokens: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """``tokens[l]`` (B, T, n_out, w) -> student tokens (B, n_out, w) per layer.

        ``generator`` is accepted (and unused) so that the baseline trains with
        :func:`~weightspace.generators.weightformer_training.fit_weightformer` like WF.
        """
        n_t = _check_teacher_tokens(self.layout, tokens, self.n_teachers)
        if n_t != self.n_teachers:
            raise InvalidParameterError(
                f"this MLP baseline was built for exactly {self.n_teachers} teachers, got {n_t}"
            )
        out = []
        for i, tok in enumerate(tokens):
            x = tok.permute(0, 2, 1, 3).flatten(2)  # (B, n_out, T * w), teacher-major
            out.append(self.mix[i](x) + self.mlp[i](x))
        return out


def student_state(layout: TokenLayout, student_tokens: Sequence[Tensor]) -> dict[str, Tensor]:
    """Generated parameters ``{name: Tensor (B, *shape)}`` (differentiable)."""
    return detokenize(layout, student_tokens)


def student_logits(
    template: nn.Module, state: dict[str, Tensor], x: Tensor, index: int = 0
) -> Tensor:
    """Logits ``(N, C)`` of generated student ``index`` of ``state`` on ``x``.

    ``template`` supplies the architecture and any buffers (BatchNorm statistics);
    gradients flow from the logits into ``state``.
    """
    params = {k: v[index] for k, v in state.items()}
    buffers = {k: v for k, v in template.named_buffers()}
    return functional_call(template, {**buffers, **params}, (x,))


def shift_consistency(
    model: WeightFormer, tokens: Sequence[Tensor], generator: torch.Generator | None = None
) -> tuple[list[Tensor], Tensor]:
    """Eq. (3): the prediction and ``||w~ - w~_shift||^2`` (mean over all generated values).

    The second pass sees the same teachers shifted by one model (``torch.roll`` along the
    teacher axis) and, in training mode, its own weight cutoff.

    Returns
    -------
    prediction : list of Tensor
        The first (unshifted) pass, ``(B, n_out_l, width_l)`` per layer.
    loss : Tensor, shape ()
    """
    first = model(tokens, generator)
    second = model([torch.roll(t, shifts=1, dims=1) for t in tokens], generator)
    diff = torch.cat([(a - b).flatten(1) for a, b in zip(first, second, strict=True)], dim=1)
    return first, diff.pow(2).mean()
