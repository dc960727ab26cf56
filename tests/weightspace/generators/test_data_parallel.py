"""Data-parallel generator training: 2 gloo processes follow 1 process (same global batch).

The issue's contract: a DDP run of the diffusion loss for a few steps equals the
single-process run with the same global batch to 1e-5; the same holds for the VAE, with
uneven shards, and across a resume from a checkpoint rank 0 wrote.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dist_helpers import run_ranks
from weightspace.distributed import SINGLE, World
from weightspace.errors import InvalidParameterError
from weightspace.generators.data_parallel import check_same_data
from weightspace.generators.denoiser import MLPDenoiser, MLPDenoiserConfig
from weightspace.generators.diffusion import GaussianDiffusion
from weightspace.generators.diffusion_loop import train_diffusion_loop
from weightspace.generators.schedule import make_schedule
from weightspace.generators.training_checkpoint import TrainingCheckpoints
from weightspace.generators.vae import ChunkVAE, ChunkVAEConfig, train_vae

N_ROWS, SHAPE, COND = 24, (3, 4), 5


def _diffusion_run(
    world: World, steps: int, batch_size: int, ck_dir: str | None = None
) -> dict[str, torch.Tensor]:
    """A few steps of the shared diffusion loop on fixed toy data; final weights and losses."""
    torch.manual_seed(0)
    data = torch.randn(N_ROWS, *SHAPE, generator=torch.Generator().manual_seed(1))
    conds = torch.randn(N_ROWS, 2, COND, generator=torch.Generator().manual_seed(2))
    denoiser = MLPDenoiser(MLPDenoiserConfig(SHAPE, COND, width=16, depth=2))
    adapter = torch.nn.Linear(COND, COND)
    trainable = torch.nn.ModuleDict({"denoiser": denoiser, "adapter": adapter})
    seen: list[int] = []  # rows each denoiser call sees: the rank's share only
    denoiser.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))

    def batch(rows: torch.Tensor, pick: torch.Tensor, gen_dev: torch.Generator):
        x0 = data[rows] + 0.01 * torch.randn(len(rows), *SHAPE, generator=gen_dev)
        return x0, adapter(conds[rows, pick])

    training = SimpleNamespace(steps=steps, batch_size=batch_size, lr=1e-2, p_uncond=0.2,
                               ema_decay=0.9)  # fmt: skip
    ck = TrainingCheckpoints(ck_dir, "toy", "fp", every=3) if ck_dir else None
    diffusion = GaussianDiffusion(make_schedule("linear", 50))
    losses = train_diffusion_loop(
        "toy", trainable, denoiser, diffusion, batch, N_ROWS, 2, training, seed=7,
        device=torch.device("cpu"), ck=ck, world=world,
    )  # fmt: skip
    out = {k: v.detach().clone() for k, v in trainable.state_dict().items()}
    return out | {"losses": torch.tensor(losses), "rows_seen": torch.tensor(seen)}


def _vae_run(world: World, epochs: int, batch_size: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    cfg = ChunkVAEConfig(chunk_size=4, n_chunks=3, n_layer_ids=2, latent_dim=2, hidden=16,
                         depth=1, beta=0.1)  # fmt: skip
    vae = ChunkVAE(cfg, torch.tensor([0, 1, 1]))
    chunks = torch.randn(21, 3, 4, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 3] = False
    losses = train_vae(vae, chunks, mask, epochs, batch_size, 1e-2, seed=5, noise_augment=0.05,
                       world=world)  # fmt: skip
    out = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    return out | {"losses": torch.tensor(losses)}


def _assert_same(ranks: list, single: dict[str, torch.Tensor]) -> None:
    for status, value in ranks:
        assert status == "ok", value
        assert value.keys() == single.keys()
        for k, v in single.items():
            if k == "rows_seen":
                continue
            torch.testing.assert_close(value[k], v, atol=1e-5, rtol=0, msg=k)
    # the ranks hold identical weights (DDP keeps them in step)
    for k in single:
        assert torch.equal(ranks[0][1][k], ranks[1][1][k]) or k in ("losses", "rows_seen")


@pytest.mark.parametrize("batch_size", [8, 7])  # 7: uneven shards (4 + 3 rows)
def test_ddp_diffusion_equals_single_process(batch_size):
    single = _diffusion_run(SINGLE, 6, batch_size)
    ranks = run_ranks(_diffusion_run, 2, 6, batch_size)
    _assert_same(ranks, single)
    # each rank ran the denoiser on its share of every batch only
    shares = [(batch_size + 1) // 2, batch_size // 2]
    for (_, value), share in zip(ranks, shares, strict=True):
        assert value["rows_seen"].tolist() == [share] * 6
    assert single["rows_seen"].tolist() == [batch_size] * 6
    # not trivially equal: training moved the weights
    fresh = _diffusion_run(SINGLE, 1, batch_size)
    weights = [k for k in single if k not in ("losses", "rows_seen")]
    moved = max(float((fresh[k] - single[k]).abs().max()) for k in weights)
    assert moved > 1e-3


def test_ddp_vae_equals_single_process():
    single = _vae_run(SINGLE, 2, 8)  # 21 models: batches of 8, 8, 5
    ranks = run_ranks(_vae_run, 2, 2, 8)
    _assert_same(ranks, single)


def test_ddp_diffusion_resumes_from_rank0_checkpoint(tmp_path):
    """A 2-rank run stopped after 3 steps (checkpoint by rank 0) and resumed to 6 steps
    ends where an uninterrupted single-process run of 6 steps ends."""
    single = _diffusion_run(SINGLE, 6, 8)
    first = run_ranks(_diffusion_run, 2, 3, 8, str(tmp_path))
    assert all(s == "ok" for s, _ in first), first
    assert len(list(tmp_path.rglob("*.meta.json")) or list(tmp_path.rglob("*"))) > 0
    resumed = run_ranks(_diffusion_run, 2, 6, 8, str(tmp_path))
    _assert_same(resumed, single)


def _differing_data(world: World) -> None:
    check_same_data(world, "toy", torch.arange(4) + world.rank)


def test_ranks_with_different_data_fail_clearly():
    ranks = run_ranks(_differing_data, 2)
    for status, value in ranks:
        assert status == "error" and value[0] == "DistributedRunError", value
        assert "differs between ranks" in value[1]


def test_global_batch_smaller_than_world_is_rejected():
    world = World(rank=0, world_size=4)
    with pytest.raises(InvalidParameterError, match="smaller than the number of processes"):
        _diffusion_run(world, 1, 3)
