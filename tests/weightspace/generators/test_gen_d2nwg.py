"""D2NWG end to end on synthetic tasks: stages, sampling, the VAE gate, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightspace.data.features import ClassFeatureBank
from weightspace.errors import (
    CheckpointMismatchError,
    GateError,
    InvalidParameterError,
    NonFiniteWeightsError,
    ShapeError,
)
from weightspace.generators.d2nwg import (
    D2NWG,
    D2NWGConfig,
    check_vae_gate,
    fit_alignment,
    fit_diffusion,
    fit_vae,
    reconstruct,
)
from weightspace.weights import ParameterSpec, WeightSet

T, K, D, PER_TASK = 8, 4, 16, 6
CFG = D2NWGConfig.from_dict(
    {
        "vae": {"latent_dim": 4, "hidden": 64},
        "encoder": {"dim": 32, "out_dim": 32, "n_inducing": 4},
        "denoiser": {"width": 64, "depth": 2, "cond_dim": 32},
        "vae_training": {"epochs": 150},
        "align": {"epochs": 15, "batch_size": 16},
        "diffusion": {"timesteps": 200, "steps": 600, "batch_size": 32},
        "sampling": {"steps": 25},
        "sets_per_task": 8,
        "shots": 4,
    }
)


@pytest.fixture(scope="module")
def problem():
    """Tasks whose ideal linear head is the matrix of class prototypes."""
    gen = torch.Generator().manual_seed(0)
    protos = torch.nn.functional.normalize(torch.randn(T, K, D, generator=gen), dim=-1) * 3
    splits = []
    for t in range(T):
        y = torch.arange(K).repeat_interleave(25)
        splits.append((protos[t][y] + 0.5 * torch.randn(len(y), D, generator=gen), y))
    w = protos.repeat_interleave(PER_TASK, 0) + 0.05 * torch.randn(
        T * PER_TASK, K, D, generator=gen
    )
    spec = ParameterSpec.from_module(nn.Linear(D, K))
    ws = WeightSet.build(
        {"weight": w, "bias": torch.zeros(T * PER_TASK, K)},
        spec,
        [str(i) for i in range(T * PER_TASK)],
        "linear",
        chunk_size=16,
    )
    bank = ClassFeatureBank.from_splits(splits, K)
    task_of_row = torch.arange(T).repeat_interleave(PER_TASK)
    return splits, ws, bank, task_of_row


def _acc(state, splits, per):
    accs = []
    for i in range(len(state["weight"])):
        x, y = splits[i // per]
        accs.append(((x @ state["weight"][i].T + state["bias"][i]).argmax(1) == y).float().mean())
    return torch.stack(accs)


@pytest.fixture(scope="module")
def trained(problem):
    torch.manual_seed(0)
    _, ws, bank, task_of_row = problem
    model = D2NWG(CFG, ws.layout, D, K)
    fit_vae(model, ws.chunks, seed=0)
    fit_alignment(model, bank, task_of_row, ws.chunks, seed=0)
    losses = fit_diffusion(model, bank, task_of_row, ws.chunks, seed=0)
    return model, losses


def test_stages_learn_and_samples_solve_the_tasks(problem, trained):
    splits, ws, bank, _ = problem
    model, losses = trained
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
    rec = ws.decode(reconstruct(model, ws.chunks))
    check_vae_gate(_acc(rec, splits, PER_TASK), _acc(ws.decode(ws.chunks), splits, PER_TASK), 0.9)
    sets = bank.sample(torch.arange(T), CFG.shots, torch.Generator().manual_seed(5))
    chunks = model.sample(sets, 3, torch.Generator().manual_seed(0))
    assert chunks.shape == (T * 3, ws.layout.num_chunks, 16)
    acc = _acc(ws.decode(chunks), splits, 3)
    # Conditioning matters: heads sampled for another task's support set do much worse.
    wrong = model.sample(sets.roll(1, 0), 3, torch.Generator().manual_seed(0))
    acc_wrong = _acc(ws.decode(wrong), splits, 3)
    assert acc.mean() > 0.38  # chance is 1/K = 0.25
    assert acc.mean() > acc_wrong.mean() + 0.1


def test_vae_gate_fires_on_a_broken_vae(problem):
    splits, ws, _, _ = problem
    broken = D2NWG(CFG, ws.layout, D, K)  # never trained: decodes noise
    rec = ws.decode(reconstruct(broken, ws.chunks))
    with pytest.raises(GateError, match="VAE gate failed"):
        check_vae_gate(
            _acc(rec, splits, PER_TASK), _acc(ws.decode(ws.chunks), splits, PER_TASK), 0.95
        )


def test_bad_conditioning_and_checkpoints(problem, trained):
    _, ws, bank, _ = problem
    model, _ = trained
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(InvalidParameterError, match=f"{K}-way"):
        model.sample(torch.zeros(1, K + 1, 3, D), 1, gen)
    with pytest.raises(InvalidParameterError, match="empty"):
        model.sample(torch.zeros(1, K, 0, D), 1, gen)
    with pytest.raises(ShapeError):
        model.sample(torch.zeros(1, K, 3, D + 1), 1, gen)
    bundle = model.to_bundle(ws.spec.fingerprint)
    again = D2NWG.from_bundle(bundle, ws.spec.fingerprint)
    sets = bank.sample(torch.arange(2), CFG.shots, torch.Generator().manual_seed(1))
    a = model.sample(sets, 2, torch.Generator().manual_seed(3))
    b = again.sample(sets, 2, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    other = ParameterSpec.from_module(nn.Linear(D, K + 1)).fingerprint
    with pytest.raises(CheckpointMismatchError, match="another parameter spec"):
        D2NWG.from_bundle(bundle, other)


def test_nan_in_sampled_weights_is_reported(problem):
    _, ws, _, _ = problem
    chunks = ws.chunks[:2].clone()
    chunks[1, 0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="model 1"):
        ws.decode(chunks)


def test_config_composes_module_configs_and_names_unknown_keys():
    cfg = D2NWGConfig()
    # The defaults that the flat config of earlier releases had.
    assert (cfg.vae.latent_dim, cfg.vae.beta, cfg.encoder.n_inducing) == (8, 1e-4, 8)
    assert (cfg.denoiser.cond_dim, cfg.diffusion.steps, cfg.sampling.steps) == (64, 3000, 50)
    assert D2NWGConfig.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(InvalidParameterError, match=r"'d2nwg\.vae\.latnet_dim'"):
        D2NWGConfig.from_dict({"vae": {"latnet_dim": 4}})
    with pytest.raises(InvalidParameterError, match=r"'d2nwg\.diffusion\.steps' must be a int"):
        D2NWGConfig.from_dict({"diffusion": {"steps": "many"}})


def test_generator_fills_data_sizes_into_module_configs(problem):
    _, ws, _, _ = problem
    model = D2NWG(CFG, ws.layout, D, K, seed=0)
    c = model.config
    assert (c.vae.chunk_size, c.vae.n_chunks) == (ws.layout.chunk_size, ws.layout.num_chunks)
    assert (c.encoder.feature_dim, c.encoder.max_classes) == (D, K)
    assert (c.denoiser.n_chunks, c.denoiser.latent_dim) == (ws.layout.num_chunks, 4)
