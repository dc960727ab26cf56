"""Counter-based RNG: exact hash values, uniform numbers, batch-independent permutations."""

import itertools
from collections import Counter

import pytest
import torch

from weightspace.zoo.rng import STREAM_INIT, STREAM_SHUFFLE, hash_keys, permutation_keys, uniform

M32 = 0xFFFFFFFF


def lowbias32(x: int) -> int:
    """Chris Wellons' lowbias32, with Python ints (the oracle)."""
    x &= M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    x ^= x >> 16
    return x


def hash_py(*keys: int) -> int:
    """The documented key combination: h = mix(k0); h = mix(h ^ (mix(k) + golden) * c)."""
    h = None
    for k in keys:
        kt = lowbias32(k & M32)
        h = kt if h is None else lowbias32(h ^ ((((kt + 0x9E3779B9) & M32) * 0x85EBCA6B) & M32))
    return h


def test_pinned_values():
    # Computed once; a change here silently changes every zoo's initial weights and orders.
    assert hash_keys(0).item() == 0
    assert hash_keys(1).item() == 1753845952
    assert hash_keys(0xFFFFFFFF).item() == 1734902346
    assert hash_keys(0, 0).item() == 1622709315
    assert hash_keys(1, 2, 3).item() == 2857366060
    assert hash_keys(42, 1, 0, 7).item() == 3208168165
    assert hash_keys(-1).item() == hash_keys(0xFFFFFFFF).item()  # keys are taken mod 2**32


@pytest.mark.parametrize("keys", [(0,), (1,), (0, 0), (1, 2, 3), (42, 1, 0, 7), (-5, 2**40 + 3)])
def test_matches_python_oracle_on_scalars(keys):
    assert hash_keys(*keys).item() == hash_py(*keys)


def test_matches_python_oracle_on_tensors_and_broadcasts():
    g = torch.Generator().manual_seed(0)
    seeds = torch.randint(-(2**40), 2**40, (7, 1), generator=g)
    counter = torch.cat(
        [torch.tensor([0, 1, M32, M32 + 1]), torch.randint(0, 2**33, (20,), generator=g)]
    )
    h = hash_keys(seeds, STREAM_INIT, 5, counter[None, :])
    assert h.shape == (7, 24)
    assert h.dtype == torch.int64
    expected = [
        [hash_py(s, STREAM_INIT, 5, c) for c in counter.tolist()] for s in seeds[:, 0].tolist()
    ]
    assert h.tolist() == expected
    assert int(h.min()) >= 0 and int(h.max()) < 2**32


def test_deterministic_and_order_sensitive():
    a = torch.arange(1000)
    assert torch.equal(hash_keys(a, 3), hash_keys(a, 3))
    assert not torch.equal(hash_keys(a, 3), hash_keys(3, a))
    assert not torch.equal(hash_keys(a, STREAM_INIT), hash_keys(a, STREAM_SHUFFLE))
    # 1000 consecutive inputs give 1000 distinct outputs (no trivial collisions).
    assert hash_keys(a, 3).unique().numel() == 1000


def test_needs_a_key():
    with pytest.raises(ValueError):
        hash_keys()


def test_uniform_range_exactness_and_moments():
    u = uniform(torch.arange(200_000), 9)
    assert u.dtype == torch.float32
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    # Exactly the top 24 bits of the hash.
    h = hash_keys(torch.arange(200_000), 9)
    assert torch.equal(u.double(), (h >> 8).double() / 2**24)
    assert abs(float(u.mean()) - 0.5) < 0.005
    assert abs(float(u.var()) - 1 / 12) < 0.002
    counts = torch.histc(u, bins=10, min=0, max=1)
    assert float(counts.min()) > 19_000 and float(counts.max()) < 21_000
    assert uniform(3, 4, dtype=torch.float64).dtype == torch.float64


def test_permutation_rows_put_real_items_first():
    seeds = torch.tensor([0, 1, 2, 3])
    n_valid = torch.tensor([5, 12, 1, 0])
    perm = permutation_keys(seeds, epoch=0, n_valid=n_valid, n_max=12)
    assert perm.shape == (4, 12)
    for b in range(4):
        row = perm[b].tolist()
        n = int(n_valid[b])
        assert sorted(row) == list(range(12))
        assert sorted(row[:n]) == list(range(n))
        assert sorted(row[n:]) == list(range(n, 12))


def test_permutation_is_independent_of_batch_and_padding():
    alone = permutation_keys(torch.tensor([7]), 3, torch.tensor([13]), 13)[0]
    batch = permutation_keys(torch.tensor([1, 7, 2, 9]), 3, torch.tensor([40, 13, 2, 50]), 64)
    assert torch.equal(batch[1, :13], alone)
    # Another batch order / composition gives the same row too.
    other = permutation_keys(torch.tensor([7, 100]), 3, torch.tensor([13, 5]), 20)
    assert torch.equal(other[0, :13], alone)


def test_permutation_changes_with_seed_and_epoch():
    n = torch.tensor([30])
    p = permutation_keys(torch.tensor([0]), 0, n, 30)[0]
    assert not torch.equal(p, permutation_keys(torch.tensor([1]), 0, n, 30)[0])
    assert not torch.equal(p, permutation_keys(torch.tensor([0]), 1, n, 30)[0])
    assert torch.equal(p, permutation_keys(torch.tensor([0]), 0, n, 30)[0])
    assert not torch.equal(p, torch.arange(30))


def test_permutations_are_uniform_over_seeds():
    seeds = torch.arange(6000)
    perm = permutation_keys(seeds, 0, torch.full((6000,), 3), 3)
    counts = Counter(tuple(r) for r in perm.tolist())
    assert set(counts) == set(itertools.permutations(range(3)))
    # 1000 expected per ordering; binomial sd ~29.
    assert all(850 < c < 1150 for c in counts.values()), counts
