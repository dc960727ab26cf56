"""The diffusion loop's index draws: made ahead in chunks, equal to drawing every step."""

import pytest
import torch

from weightspace.errors import InvalidParameterError
from weightspace.generators.diffusion_loop import IndexDraws


def _per_step(seed: int, steps: int, n_rows: int, n_sets: int, b: int):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        rows = torch.randint(0, n_rows, (b,), generator=gen)
        out.append((rows, torch.randint(0, n_sets, rows.shape, generator=gen)))
    return out, gen


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunked_draws_equal_per_step_draws_and_the_used_state(chunk):
    steps, n_rows, n_sets, b = 17, 50, 4, 6
    want, _ = _per_step(0, steps, n_rows, n_sets, b)
    gen = torch.Generator().manual_seed(0)
    draws = IndexDraws(gen, n_rows, n_sets, b, steps, torch.device("cpu"), chunk)
    for i, (rows, pick) in enumerate(want):
        got = draws.next()
        assert torch.equal(got[0], rows) and torch.equal(got[1], pick)
        # the state a checkpoint stores: as if only steps 0..i had been drawn
        _, after = _per_step(0, i + 1, n_rows, n_sets, b)
        assert torch.equal(draws.consumed_state(), after.get_state())
    # nothing drawn beyond the last step: the generator ends where per-step drawing does
    assert torch.equal(gen.get_state(), after.get_state())
    with pytest.raises(InvalidParameterError, match="every step's draws are used"):
        draws.next()


def test_a_chunk_ahead_of_the_used_steps_is_undone_by_the_consumed_state():
    gen = torch.Generator().manual_seed(3)
    draws = IndexDraws(gen, 10, 2, 4, 100, torch.device("cpu"), chunk=16)
    for _ in range(5):
        draws.next()
    _, after5 = _per_step(3, 5, 10, 2, 4)
    assert not torch.equal(gen.get_state(), after5.get_state())  # 16 drawn ahead
    assert torch.equal(draws.consumed_state(), after5.get_state())
