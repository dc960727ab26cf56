"""Set Transformer blocks: shapes, permutation symmetries, masking."""

from __future__ import annotations

import pytest
import torch

from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.generators.set_transformer import ISAB, MAB, PMA, SAB

B, N, D_IN, DIM, HEADS = 3, 7, 5, 8, 2


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_output_shapes() -> None:
    x = torch.randn(B, N, D_IN)
    y = torch.randn(B, 4, 6)
    assert MAB(D_IN, 6, DIM, HEADS)(x, y).shape == (B, N, DIM)
    assert SAB(D_IN, DIM, HEADS)(x).shape == (B, N, DIM)
    assert ISAB(D_IN, DIM, HEADS, n_inducing=3)(x).shape == (B, N, DIM)
    assert PMA(DIM, HEADS, n_seeds=2)(torch.randn(B, N, DIM)).shape == (B, 2, DIM)


def test_mab_matches_paper_equation() -> None:
    """MAB(X, Y) = LN(H + rFF(H)), H = LN(X + Multihead(X, Y, Y)), against torch's MHA."""
    mab = MAB(DIM, DIM, DIM, HEADS).eval()
    mha = torch.nn.MultiheadAttention(DIM, HEADS, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([mab.w_q.weight, mab.w_k.weight, mab.w_v.weight]))
        mha.in_proj_bias.copy_(torch.cat([mab.w_q.bias, mab.w_k.bias, mab.w_v.bias]))
        mha.out_proj.weight.copy_(mab.w_o.weight)
        mha.out_proj.bias.copy_(mab.w_o.bias)
    x, y = torch.randn(B, N, DIM), torch.randn(B, 4, DIM)
    mask = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    attn, _ = mha(x, y, y, key_padding_mask=~mask, need_weights=False)
    h = mab.ln0(x + attn)
    expected = mab.ln1(h + mab.rff(h))
    torch.testing.assert_close(mab(x, y, mask), expected, atol=1e-5, rtol=1e-5)


def test_sab_is_permutation_equivariant() -> None:
    sab = SAB(D_IN, DIM, HEADS)
    x = torch.randn(B, N, D_IN)
    perm = torch.randperm(N)
    torch.testing.assert_close(sab(x[:, perm]), sab(x)[:, perm], atol=1e-5, rtol=1e-5)


def test_isab_pma_is_permutation_invariant() -> None:
    isab, pma = ISAB(D_IN, DIM, HEADS, 4), PMA(DIM, HEADS, 1)
    x = torch.randn(B, N, D_IN)
    perm = torch.randperm(N)
    out = pma(isab(x))
    torch.testing.assert_close(pma(isab(x[:, perm])), out, atol=1e-5, rtol=1e-5)
    # and it is not a constant function
    assert not torch.allclose(pma(isab(torch.randn(B, N, D_IN))), out, atol=1e-3)


@pytest.mark.parametrize("block", ["sab", "isab", "pma", "mab"])
def test_padding_has_no_influence(block: str) -> None:
    """Appending garbage elements marked False leaves the real outputs unchanged."""
    dim_in = DIM if block == "pma" else D_IN
    mods = {
        "sab": SAB(dim_in, DIM, HEADS),
        "isab": ISAB(dim_in, DIM, HEADS, 3),
        "pma": PMA(DIM, HEADS, 2),
        "mab": MAB(DIM, dim_in, DIM, HEADS),
    }
    mod = mods[block]
    q = torch.randn(B, 2, DIM)
    x = torch.randn(B, N, dim_in)
    garbage = 1e3 * torch.randn(B, 4, dim_in)
    padded = torch.cat([x, garbage], dim=1)
    mask = torch.cat([torch.ones(B, N), torch.zeros(B, 4)], dim=1).bool()

    def run(inp: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        return mod(q, inp, m) if block == "mab" else mod(inp, m)

    ref = run(x, None)
    out = run(padded, mask)
    if block in ("sab", "isab"):
        assert torch.all(out[:, N:] == 0)
        out = out[:, :N]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # Without the mask the garbage does change the result (the test can fail).
    unmasked = run(padded, None)
    unmasked = unmasked[:, :N] if block in ("sab", "isab") else unmasked
    assert not torch.allclose(unmasked, ref, atol=1e-3)


def test_ragged_sets_batch_like_separate_calls() -> None:
    isab, pma = ISAB(D_IN, DIM, HEADS, 3), PMA(DIM, HEADS, 1)
    sizes = [2, 7, 4]
    sets = [torch.randn(1, n, D_IN) for n in sizes]
    padded = torch.zeros(len(sizes), max(sizes), D_IN)
    mask = torch.zeros(len(sizes), max(sizes), dtype=torch.bool)
    for i, s in enumerate(sets):
        padded[i, : s.shape[1]] = s[0]
        mask[i, : s.shape[1]] = True
    batched = pma(isab(padded, mask), mask)
    for i, s in enumerate(sets):
        torch.testing.assert_close(batched[i], pma(isab(s))[0], atol=1e-5, rtol=1e-5)


def test_all_padded_set_is_finite_with_finite_gradients() -> None:
    pma = PMA(DIM, HEADS, 1)
    z = torch.randn(2, 3, DIM, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out = pma(z, mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(z.grad).all()


def test_bad_arguments() -> None:
    with pytest.raises(InvalidParameterError, match="divisible"):
        MAB(4, 4, 6, 4)
    with pytest.raises(InvalidParameterError, match="n_inducing"):
        ISAB(4, 8, 2, 0)
    with pytest.raises(ShapeError, match="mask"):
        SAB(D_IN, DIM, HEADS)(torch.randn(B, N, D_IN), torch.ones(B, N + 1, dtype=torch.bool))
    with pytest.raises(ShapeError, match="queries"):
        SAB(D_IN, DIM, HEADS)(torch.randn(B, N, D_IN + 1))
