"""Set Transformer blocks: MAB, SAB, ISAB and PMA (Lee et al., 2019).

Lee, Lee, Kim, Kosiorek, Choi and Teh, *"Set Transformer: A Framework for
Attention-based Permutation-Invariant Neural Networks"*, ICML 2019, Section 3:

* **MAB** (multihead attention block, Eq. 6-7) between a query set ``X`` and a key set
  ``Y``::

      H        = LayerNorm(X + Multihead(X, Y, Y))
      MAB(X,Y) = LayerNorm(H + rFF(H))

  ``Multihead(Q, K, V) = concat(O_1, ..., O_h) W^O`` with
  ``O_j = softmax(Q W^Q_j (K W^K_j)^T / sqrt(d_h)) V W^V_j`` and ``d_h = dim / heads``.
  ``rFF`` is a row-wise feed-forward network (``Linear -> ReLU -> Linear``). When the
  query width ``dim_q`` differs from ``dim`` the residual uses the projected queries
  ``X W^Q`` (as the authors' reference code does), otherwise ``X`` itself.
* **SAB** (set attention block, Eq. 8): ``SAB(X) = MAB(X, X)``; permutation-equivariant.
* **ISAB** (induced set attention block, Eq. 9-10) with ``m`` learned inducing points
  ``I``: ``ISAB_m(X) = MAB(X, H)``, ``H = MAB(I, X)``; permutation-equivariant in
  ``O(n m)`` instead of ``O(n^2)``.
* **PMA** (pooling by multihead attention, Eq. 11) with ``k`` learned seed vectors ``S``:
  ``PMA_k(Z) = MAB(S, rFF(Z))``; permutation-invariant, ``(B, n, dim) -> (B, k, dim)``.

Masks
-----
Every block takes an optional ``mask`` of shape ``(B, N)`` (bool, ``True`` = a real set
element, ``False`` = padding) so that sets of different sizes batch together. Padded
elements are removed from every attention as keys *and* values (their attention weight
is exactly zero and their values are zeroed), so they have no influence on the outputs;
the outputs of SAB and ISAB at padded positions are set to zero. A set whose mask is
all ``False`` attends to nothing (the attention term is zero) instead of producing NaN;
callers that must reject empty sets check for them (see
:class:`~weightspace.generators.dataset_encoder.SetDatasetEncoder`).

D2NWG uses these blocks as its image-dataset encoder (authors' discussion of Section
3.3: *"we employ a Set Transformer to capture inter- and intra-class relationships"*).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weightspace.errors import InvalidParameterError, ShapeError

__all__ = ["ISAB", "MAB", "PMA", "SAB"]


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}")


def _check_mask(mask: torch.Tensor | None, x: torch.Tensor, what: str) -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise ShapeError(
            f"{what} mask must be a bool tensor (True = real element), got {mask.dtype}"
        )
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ShapeError(
            f"{what} mask must have shape (B, N) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}"
        )


class RowFF(nn.Module):
    """Row-wise feed-forward ``rFF``: ``Linear(dim, dim) -> ReLU -> Linear(dim, dim)``.

    Applied independently to every set element, so it commutes with permutations.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., dim) -> (..., dim)``."""
        return self.net(x)


class MAB(nn.Module):
    """Multihead attention block ``MAB(X, Y) = LN(H + rFF(H))``, ``H = LN(X + MH(X, Y, Y))``.

    Parameters
    ----------
    dim_q : int
        Width of the query set ``X``.
    dim_k : int
        Width of the key/value set ``Y``.
    dim : int
        Output width; must be divisible by ``heads``.
    heads : int
        Number of attention heads.
    ln : bool
        Apply the two LayerNorms (``False`` drops them, as in the paper's ablation).
    """

    def __init__(self, dim_q: int, dim_k: int, dim: int, heads: int, ln: bool = True) -> None:
        super().__init__()
        for name, value in (("dim_q", dim_q), ("dim_k", dim_k), ("dim", dim), ("heads", heads)):
            _check_positive(name, value)
        if dim % heads:
            raise InvalidParameterError(
                f"MAB: dim={dim} is not divisible by heads={heads}; choose dim as a multiple "
                "of heads"
            )
        self.dim_q, self.dim_k, self.dim, self.heads = dim_q, dim_k, dim, heads
        self.w_q = nn.Linear(dim_q, dim)
        self.w_k = nn.Linear(dim_k, dim)
        self.w_v = nn.Linear(dim_k, dim)
        self.w_o = nn.Linear(dim, dim)
        self.rff = RowFF(dim)
        self.ln0 = nn.LayerNorm(dim) if ln else nn.Identity()
        self.ln1 = nn.LayerNorm(dim) if ln else nn.Identity()

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend from the queries ``x`` to the (masked) keys ``y``.

        Parameters
        ----------
        x : Tensor, shape (B, Nq, dim_q)
            Query set.
        y : Tensor, shape (B, Nk, dim_k)
            Key/value set.
        mask : Tensor of bool, shape (B, Nk), optional
            ``True`` for real elements of ``y``; padded elements get zero attention.

        Returns
        -------
        Tensor, shape (B, Nq, dim)
        """
        if x.ndim != 3 or x.shape[-1] != self.dim_q:
            raise ShapeError(f"MAB queries must be (B, Nq, {self.dim_q}), got {tuple(x.shape)}")
        if y.ndim != 3 or y.shape[-1] != self.dim_k or y.shape[0] != x.shape[0]:
            raise ShapeError(
                f"MAB keys must be (B={x.shape[0]}, Nk, {self.dim_k}), got {tuple(y.shape)}"
            )
        _check_mask(mask, y, "MAB key")
        B, Nq, Nk, h = x.shape[0], x.shape[1], y.shape[1], self.heads
        dh = self.dim // h
        q = self.w_q(x)
        k = self.w_k(y)
        v = self.w_v(y)
        if mask is not None:
            keep = mask[..., None]
            k = k.masked_fill(~keep, 0.0)
            v = v.masked_fill(~keep, 0.0)
        # (B, h, N, dh)
        qh = q.view(B, Nq, h, dh).transpose(1, 2)
        kh = k.view(B, Nk, h, dh).transpose(1, 2)
        vh = v.view(B, Nk, h, dh).transpose(1, 2)
        scores = qh @ kh.transpose(-1, -2) / dh**0.5  # (B, h, Nq, Nk)
        if mask is not None:
            key_ok = mask[:, None, None, :]
            # A finite fill keeps all-padded rows free of NaN (forward and backward); the
            # product with the mask then makes padded weights exactly zero.
            scores = scores.masked_fill(~key_ok, torch.finfo(scores.dtype).min)
            attn = F.softmax(scores, dim=-1) * key_ok
        else:
            attn = F.softmax(scores, dim=-1)
        o = (attn @ vh).transpose(1, 2).reshape(B, Nq, self.dim)
        residual = x if self.dim_q == self.dim else q
        hdn = self.ln0(residual + self.w_o(o))
        return self.ln1(hdn + self.rff(hdn))


class SAB(nn.Module):
    """Set attention block ``SAB(X) = MAB(X, X)``; permutation-equivariant.

    Parameters
    ----------
    dim_in : int
        Width of the input set.
    dim : int
        Output width.
    heads : int
        Attention heads.
    ln : bool
        Use LayerNorm inside the MAB.
    """

    def __init__(self, dim_in: int, dim: int, heads: int, ln: bool = True) -> None:
        super().__init__()
        self.mab = MAB(dim_in, dim_in, dim, heads, ln=ln)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N, dim_in)`` with optional ``mask (B, N)`` -> ``(B, N, dim)``.

        Outputs at padded positions are zero.
        """
        out = self.mab(x, x, mask)
        return out if mask is None else out.masked_fill(~mask[..., None], 0.0)


class ISAB(nn.Module):
    """Induced set attention block ``ISAB_m(X) = MAB(X, MAB(I, X))``.

    Permutation-equivariant, linear in the set size ``N`` (``O(N m)`` attention).

    Parameters
    ----------
    dim_in : int
        Width of the input set.
    dim : int
        Output width.
    heads : int
        Attention heads.
    n_inducing : int
        ``m``, number of learned inducing points ``I`` of shape ``(m, dim)``.
    ln : bool
        Use LayerNorm inside the MABs.
    """

    def __init__(self, dim_in: int, dim: int, heads: int, n_inducing: int, ln: bool = True) -> None:
        super().__init__()
        _check_positive("n_inducing", n_inducing)
        self.inducing = nn.Parameter(torch.empty(1, n_inducing, dim))
        nn.init.xavier_uniform_(self.inducing)
        self.mab_in = MAB(dim, dim_in, dim, heads, ln=ln)
        self.mab_out = MAB(dim_in, dim, dim, heads, ln=ln)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N, dim_in)`` with optional ``mask (B, N)`` -> ``(B, N, dim)``.

        Padded elements are excluded from ``H = MAB(I, X)``; outputs there are zero.
        """
        hdn = self.mab_in(self.inducing.expand(x.shape[0], -1, -1), x, mask)  # (B, m, dim)
        out = self.mab_out(x, hdn)
        return out if mask is None else out.masked_fill(~mask[..., None], 0.0)


class PMA(nn.Module):
    """Pooling by multihead attention ``PMA_k(Z) = MAB(S, rFF(Z))``; permutation-invariant.

    Parameters
    ----------
    dim : int
        Width of the input set and of the output.
    heads : int
        Attention heads.
    n_seeds : int
        ``k``, number of learned seed vectors ``S`` (one output vector each).
    ln : bool
        Use LayerNorm inside the MAB.
    """

    def __init__(self, dim: int, heads: int, n_seeds: int, ln: bool = True) -> None:
        super().__init__()
        _check_positive("n_seeds", n_seeds)
        self.seeds = nn.Parameter(torch.empty(1, n_seeds, dim))
        nn.init.xavier_uniform_(self.seeds)
        self.rff = RowFF(dim)
        self.mab = MAB(dim, dim, dim, heads, ln=ln)

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N, dim)`` with optional ``mask (B, N)`` -> ``(B, n_seeds, dim)``."""
        if z.ndim != 3:
            raise ShapeError(f"PMA input must be (B, N, dim), got {tuple(z.shape)}")
        return self.mab(self.seeds.expand(z.shape[0], -1, -1), self.rff(z), mask)
