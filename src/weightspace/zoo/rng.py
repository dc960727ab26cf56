"""Counter-based random numbers: the same member gets the same stream anywhere.

Batched training must not let a member's randomness depend on which other members share
its batch, on the batch order, or on the device. A global generator cannot promise that;
a counter-based hash can: every random number is ``hash(seed, stream, counter)``, so a
member retrained alone (after its checkpoint was deleted) draws exactly the numbers it
drew inside a batch of thousands, on CPU or GPU alike (integer arithmetic is exact).

The mixing function is Chris Wellons' ``lowbias32`` (a 32-bit avalanche hash). All
arithmetic is done in int64 on values below 2**32, with 32x32-bit products split into
16-bit halves so that nothing overflows.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9

# Streams: distinct constants so that init and shuffling never share numbers.
STREAM_INIT = 1
STREAM_SHUFFLE = 2


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 avalanche hash of int64 values in ``[0, 2**32)``."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash_keys(*keys: torch.Tensor | int) -> torch.Tensor:
    """Hash broadcastable integer keys to uint32 values (as int64).

    Parameters
    ----------
    *keys : Tensor or int
        Integer tensors (any broadcastable shapes) or Python ints; the result depends on
        the order of the keys.

    Returns
    -------
    Tensor
        int64 values in ``[0, 2**32)`` of the broadcast shape.
    """
    h: torch.Tensor | None = None
    for k in keys:
        kt = torch.as_tensor(k, dtype=torch.int64) if not torch.is_tensor(k) else k.long()
        kt = mix32(kt & MASK32)
        h = kt if h is None else mix32(h ^ _mul32((kt + _GOLDEN) & MASK32, 0x85EBCA6B))
    if h is None:
        raise ValueError("hash_keys needs at least one key")
    return h


def uniform(*keys: torch.Tensor | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform numbers in ``[0, 1)`` from hashed keys (24 random bits, exact in float32)."""
    return (hash_keys(*keys) >> 8).to(dtype) * (1.0 / (1 << 24))


def permutation_keys(
    seeds: torch.Tensor, epoch: int, n_valid: torch.Tensor, n_max: int
) -> torch.Tensor:
    """Per-member random orderings of ``n_valid`` items padded to ``n_max``.

    Parameters
    ----------
    seeds : LongTensor (B,)
        One seed per member.
    epoch : int
        Epoch counter (a new order per epoch).
    n_valid : LongTensor (B,)
        Number of real items of each member; positions ``>= n_valid`` are padding.
    n_max : int
        Padded length.

    Returns
    -------
    LongTensor (B, n_max)
        Row ``b`` is a permutation of ``0..n_max-1`` whose first ``n_valid[b]`` entries
        are a uniformly random ordering of the real items ``0..n_valid[b]-1``.
    """
    pos = torch.arange(n_max, device=seeds.device)
    keys = hash_keys(seeds[:, None], STREAM_SHUFFLE, epoch, pos[None, :])
    keys = torch.where(pos[None, :] < n_valid[:, None], keys, keys + (1 << 33))
    return torch.argsort(keys, dim=1, stable=True)
