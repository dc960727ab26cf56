"""D2NWG under faults: bad settings fail at once, data seeds key the zoo, and generator
training survives kills, Ctrl-C and corrupt or stale checkpoints.

* Every bad value fails in the pipeline's first node (``build_settings``), in well under
  a second, naming its key (before any zoo is trained).
* Scenario (b)'s networks (and scenario (a)'s planned members) carry the data seed: another
  split means other members, never a reuse of networks that saw its test data.
* The VAE and diffusion loops checkpoint periodically; after a crash, a SIGKILL or a
  SIGINT a rerun resumes (from a step > 0) and ends with the weights of an uninterrupted
  run; a corrupt checkpoint is skipped with a warning; other settings never resume one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest helpers
from conftest import merged_params
from weightspace.data.features import ClassFeatureBank
from weightspace.errors import InvalidParameterError
from weightspace.generators.d2nwg import (
    D2NWG,
    D2NWGConfig,
    DiffusionTraining,
    fit_alignment,
    fit_diffusion,
    fit_vae,
)
from weightspace.generators.diffusion import GaussianDiffusion
from weightspace.generators.training_checkpoint import CheckpointPolicy
from weightspace.generators.vae import ChunkVAE, train_vae
from weightspace.weights import ParameterSpec, WeightSet
from weightspace_kedro.pipelines.d2nwg import heads, networks
from weightspace_kedro.pipelines.d2nwg.pipeline import create_pipeline
from weightspace_kedro.pipelines.d2nwg.settings import HeadsSettings
from weightspace_kedro.pipelines.zoo import nodes as zoo_nodes

pytestmark = pytest.mark.usefixtures("one_thread")
HERE = Path(__file__).resolve()


# ---------------------------------------------------------------------- 1. settings
def _set(params: dict, path: str, value) -> dict:
    block = params
    keys = path.split(".")
    for k in keys[:-1]:
        block = block.setdefault(k, {})
    block[keys[-1]] = value
    return params


BAD = [
    ("d2nwg_heads", "generator.chunk_size", 0, r"generator\.chunk_size must be an integer >= 1"),
    ("d2nwg_networks", "generator.chunk_size", 0, r"generator\.chunk_size"),
    ("d2nwg_heads", "pool.way", 50, r"pool\.way \(50\) is more than the 7 seen classes"),
    ("d2nwg_heads", "generator.d2nwg.diffusion.lr", -1, r"diffusion\.lr must be a finite"),
    ("d2nwg_heads", "generator.d2nwg.vae_training.lr", math.nan, r"vae_training\.lr .*nan"),
    ("d2nwg_networks", "generator.d2nwg.diffusion.steps", 0, r"diffusion\.steps must be"),
    ("d2nwg_heads", "generator.d2nwg.vae_training.epochs", 0, r"vae_training\.epochs"),
    ("d2nwg_heads", "generator.chunksize", 8,
     r"unknown key 'd2nwg_heads\.settings\.generator\.chunksize'.*allowed keys.*chunk_size"),
    ("d2nwg_networks", "evaluation.shots", "five",
     r"d2nwg_networks\.settings\.evaluation\.shots' must be a int"),
    ("d2nwg_networks", "evaluation.shots", 0, r"evaluation\.shots must be an integer >= 1"),
    ("d2nwg_heads", "generator.d2nwg.diffusion.schedule", "cosin",
     r"diffusion\.schedule must be one of \['linear', 'cosine'\]"),
    ("d2nwg_heads", "pool.domains", [{"name": "imagenet"}],
     r"pool\.domains: unknown dataset 'imagenet'; choose from .*digits"),
    ("d2nwg_heads", "pool.domains", [{"name": "cifar10"}], r"pool\.domains: 'cifar10'.*embedded"),
    ("d2nwg_heads", "pool.domains", [{"name": "digits", "novel": [7, 10]}],
     r"novel must be distinct classes in \[0, 10\)"),
    ("d2nwg_heads", "pool.n_novel", 5, r"pool\.n_novel \(5\) exceeds"),
    ("d2nwg_heads", "pool.n_zoo", 1000, r"pool\.n_zoo \+ pool\.n_unseen"),
    ("d2nwg_heads", "evaluation.n_seen", 100, r"evaluation\.n_seen \(100\) must be <= pool\.n_zoo"),
    ("d2nwg_heads", "device", "gpu", r"device must be 'auto'"),
    ("d2nwg_networks", "generator.vae_gate", 1.5, r"generator\.vae_gate must be a number in"),
    ("d2nwg_heads", "generator.checkpoint_every", 0, r"generator\.checkpoint_every"),
    ("d2nwg_heads", "generator.d2nwg.sampling.steps", 500,
     r"sampling\.steps \(500\) must be <= diffusion\.timesteps \(50\)"),
    ("d2nwg_heads", "heads.train.lr", -0.1, r"lr must be > 0"),
    ("d2nwg_heads", "backbone.name", "transformer", r"backbone\.name: unknown architecture"),
]  # fmt: skip


@pytest.mark.parametrize(("scenario", "path", "value", "match"), BAD)
def test_bad_setting_fails_in_the_settings_node_at_once(scenario, path, value, match):
    params = merged_params("test")
    settings = _set(params[scenario]["settings"], path, value)
    node = heads.build_settings if scenario == "d2nwg_heads" else networks.build_settings
    start = time.perf_counter()
    with pytest.raises(InvalidParameterError, match=match) as info:
        node(settings)
    assert time.perf_counter() - start < 0.5
    assert "parameters_d2nwg.yml" in str(info.value)


def test_settings_node_is_first_and_library_refuses_bad_values_too():
    pipe = create_pipeline()
    # depends on nothing computed; the networks scenario also reads its zoo's data block
    # (its seed must be the scenario's: checked before the zoo is trained)
    extra = {"d2nwg_heads": [], "d2nwg_networks": ["params:zoo_d2nwg_networks.data"]}
    for ns in ("d2nwg_heads", "d2nwg_networks"):
        (node,) = [n for n in pipe.nodes if n.name == f"{ns}.build_settings"]
        assert node.inputs == [f"params:{ns}.settings", *extra[ns]]
    with pytest.raises(InvalidParameterError, match=r"diffusion\.steps"):
        DiffusionTraining(steps=0)
    with pytest.raises(InvalidParameterError, match=r"pool\.way"):
        HeadsSettings(pool=HeadsSettings().pool.__class__(way=50))
    # the embedded defaults are valid as they stand
    assert heads.build_settings(merged_params("base")["d2nwg_heads"]["settings"]).pool.way == 5


# ---------------------------------------------------------------------- 2. data seed
def test_data_seed_keys_the_networks_zoo_members():
    zp = merged_params("test")["zoo_d2nwg_networks"]
    ids = {}
    for seed in (0, 1):
        data = {**zp["data"], "seed": seed}
        members = zoo_nodes.plan_members(zoo_nodes.load_datasets(data), zp["grid"], data)
        assert {m.data_seed for m in members} == {seed}
        ids[seed] = {m.member_id for m in members}
    assert ids[0] and not ids[0] & ids[1]  # another split: other networks, none reused
    mixed = [*members[:1], dataclasses.replace(members[1], data_seed=0)]
    with pytest.raises(InvalidParameterError, match="data seeds"):
        networks.zoo_tasks(mixed, zoo_nodes.load_datasets(data), None)


def test_data_seed_keys_the_heads_scenario_backbones():
    params = merged_params("test")["d2nwg_heads"]["settings"]
    ids = {}
    for seed in (0, 1):
        members, _ = heads.plan_backbones(heads.build_settings({**params, "seed": seed}))
        assert {m.data_seed for m in members} == {seed}
        ids[seed] = {m.member_id for m in members}
    assert not ids[0] & ids[1]


# ---------------------------------------------------------------------- 3. checkpoints
def vae_problem():
    """A tiny chunk VAE and its data (deterministic; also built by the kill subprocess)."""
    gen = torch.Generator().manual_seed(0)
    chunks = torch.randn(24, 4, 8, generator=gen)
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[-1, 5:] = False
    chunks = chunks * mask
    torch.manual_seed(0)
    vae = ChunkVAE.from_layout(_Layout(), latent_dim=2, hidden=16, depth=1)
    return vae, chunks, mask


class _Layout:
    chunk_size, num_chunks, num_layers = 8, 4, 2
    layer_id = torch.tensor([0, 0, 1, 1])


def train_tiny_vae(directory: str | None, epochs: int, every: int = 4) -> tuple[nn.Module, list]:
    vae, chunks, mask = vae_problem()
    policy = None if directory is None else CheckpointPolicy(directory, every)
    losses = train_vae(
        vae, chunks, mask, epochs, 8, 1e-2, seed=3, noise_augment=0.01, checkpoint=policy
    )
    return vae, losses


def _same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=1e-6, rtol=0, msg=k)


class _CrashError(RuntimeError):
    pass


def _crash_after(monkeypatch, cls, name: str, calls: int, action=None) -> None:
    """Patch ``cls.name`` to crash (or run ``action``) at its ``calls``-th call."""
    original = getattr(cls, name)
    count = {"n": 0}

    def patched(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            if action is None:
                raise _CrashError("simulated crash")
            action()
        return original(*args, **kwargs)

    monkeypatch.setattr(cls, name, patched)


def _resumed_from(caplog) -> list[int]:
    return [int(r.args[0]) for r in caplog.records if "resuming from step" in r.msg]


def test_vae_resume_after_crash_equals_uninterrupted(tmp_path, monkeypatch, caplog):
    ref, ref_losses = train_tiny_vae(None, 12)
    with monkeypatch.context() as m:
        _crash_after(m, ChunkVAE, "loss", 27)  # during epoch 7 (3 steps per epoch)
        with pytest.raises(_CrashError):
            train_tiny_vae(str(tmp_path), 12)
    caplog.set_level(logging.INFO)
    vae, losses = train_tiny_vae(str(tmp_path), 12)
    assert _resumed_from(caplog) == [24]  # epoch 8's checkpoint; the crash was in epoch 9
    _same(vae, ref)
    assert losses == ref_losses


@pytest.fixture(scope="module")
def diffusion_problem():
    """A tiny D2NWG after its VAE and alignment stages, ready for diffusion."""
    gen = torch.Generator().manual_seed(0)
    t, k, d, per = 3, 2, 8, 4
    protos = torch.randn(t, k, d, generator=gen)
    y = torch.arange(k).repeat_interleave(6)
    splits = [(protos[i][y] + 0.3 * torch.randn(len(y), d, generator=gen), y) for i in range(t)]
    w = protos.repeat_interleave(per, 0) + 0.05 * torch.randn(t * per, k, d, generator=gen)
    spec = ParameterSpec.from_module(nn.Linear(d, k))
    ws = WeightSet.build(
        {"weight": w, "bias": torch.zeros(t * per, k)}, spec,
        [str(i) for i in range(t * per)], "linear", chunk_size=8,
    )  # fmt: skip
    cfg = D2NWGConfig.from_dict({
        "vae": {"latent_dim": 2, "hidden": 16, "depth": 1},
        "encoder": {"dim": 8, "out_dim": 8, "n_inducing": 2, "heads": 2, "depth": 1},
        "denoiser": {"width": 16, "depth": 1, "heads": 2, "cond_dim": 8},
        "vae_training": {"epochs": 3, "batch_size": 8},
        "align": {"epochs": 1, "batch_size": 8},
        "diffusion": {"timesteps": 20, "steps": 30, "batch_size": 8},
        "sampling": {"steps": 5}, "sets_per_task": 2, "shots": 2,
    })  # fmt: skip
    bank = ClassFeatureBank.from_splits(splits, k)
    task_of_row = torch.arange(t).repeat_interleave(per)
    model = D2NWG(cfg, ws.layout, d, k, seed=0)
    fit_vae(model, ws.chunks, 0)
    fit_alignment(model, bank, task_of_row, ws.chunks, 0)
    return model, bank, task_of_row, ws.chunks


def _diffuse(problem, directory, every: int = 7, lr: float | None = None):
    model, bank, task_of_row, chunks = problem
    model = copy.deepcopy(model)
    if lr is not None:
        cfg = model.config
        model.config = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, lr=lr))
    policy = None if directory is None else CheckpointPolicy(str(directory), every)
    losses = fit_diffusion(model, bank, task_of_row, chunks, seed=0, checkpoint=policy)
    return model, losses


def test_diffusion_resume_after_crash_equals_uninterrupted(
    diffusion_problem, tmp_path, monkeypatch, caplog
):
    ref, ref_losses = _diffuse(diffusion_problem, None)
    with monkeypatch.context() as m:
        _crash_after(m, GaussianDiffusion, "training_loss", 17)
        with pytest.raises(_CrashError):
            _diffuse(diffusion_problem, tmp_path)
    caplog.set_level(logging.INFO)
    model, losses = _diffuse(diffusion_problem, tmp_path)
    assert _resumed_from(caplog) == [14]  # checkpoints at 7 and 14; crash in step 17
    _same(model, ref)
    assert losses == ref_losses
    # the finished run left a final checkpoint: a rerun is instant and identical
    caplog.clear()
    again, _ = _diffuse(diffusion_problem, tmp_path)
    assert _resumed_from(caplog) == [30]
    _same(again, ref)


def test_corrupt_checkpoint_is_ignored_with_a_warning(diffusion_problem, tmp_path, caplog):
    ref, _ = _diffuse(diffusion_problem, None)
    _diffuse(diffusion_problem, tmp_path)  # keeps the last two: steps 28 and 30
    (folder,) = tmp_path.iterdir()
    latest = folder / "step-000000030.pt"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    caplog.set_level(logging.INFO)
    model, _ = _diffuse(diffusion_problem, tmp_path)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ignoring corrupt checkpoint" in r.getMessage() for r in warnings)
    assert _resumed_from(caplog) == [28]  # fell back to the previous checkpoint
    _same(model, ref)
    # both unreadable (a truncated file, a garbled JSON): training restarts from none
    for p in folder.glob("*.pt"):
        p.write_bytes(p.read_bytes()[:100])
    (folder / "step-000000030.json").write_text("{not json")
    caplog.clear()
    model, _ = _diffuse(diffusion_problem, tmp_path)
    assert _resumed_from(caplog) == [] and "ignoring corrupt" in caplog.text
    _same(model, ref)


def test_checkpoint_of_other_settings_is_not_used(diffusion_problem, tmp_path, caplog):
    _diffuse(diffusion_problem, tmp_path, lr=1e-3)
    (other,) = tmp_path.iterdir()
    ref, _ = _diffuse(diffusion_problem, None, lr=5e-4)
    caplog.set_level(logging.INFO)
    model, _ = _diffuse(diffusion_problem, tmp_path, lr=5e-4)
    assert _resumed_from(caplog) == []
    (mine,) = set(tmp_path.iterdir()) - {other}  # one folder per fingerprint
    _same(model, ref)
    # another run's checkpoint put into this run's folder is refused by its metadata
    for p in other.glob("step-000000030.*"):
        (mine / p.name).write_bytes(p.read_bytes())
    caplog.clear()
    model, _ = _diffuse(diffusion_problem, tmp_path, lr=5e-4)
    assert "fingerprint differs" in caplog.text
    assert _resumed_from(caplog) == [28]
    _same(model, ref)


def test_sigint_stops_after_the_step_with_a_checkpoint(
    diffusion_problem, tmp_path, monkeypatch, caplog
):
    ref, _ = _diffuse(diffusion_problem, None, every=1000)
    before = signal.getsignal(signal.SIGINT)
    with monkeypatch.context() as m:
        raise_sigint = lambda: signal.raise_signal(signal.SIGINT)  # noqa: E731
        _crash_after(m, GaussianDiffusion, "training_loss", 12, action=raise_sigint)
        with pytest.raises(KeyboardInterrupt, match="checkpoint written at step 12"):
            _diffuse(diffusion_problem, tmp_path, every=1000)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    caplog.set_level(logging.INFO)
    model, _ = _diffuse(diffusion_problem, tmp_path, every=1000)
    assert _resumed_from(caplog) == [12]
    _same(model, ref)


_KILL_SCRIPT = """
import importlib.util, sys, torch
torch.set_num_threads(1)
spec = importlib.util.spec_from_file_location("faults", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
mod.train_tiny_vae(sys.argv[2], int(sys.argv[3]), every=3)
"""


def test_sigkill_then_rerun_resumes_and_completes(tmp_path, caplog):
    epochs = 400
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(HERE), str(tmp_path), str(epochs)], env=env
    )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*/step-*.json")):
            assert proc.poll() is None, "the training subprocess ended before a checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    caplog.set_level(logging.INFO)
    vae, losses = train_tiny_vae(str(tmp_path), epochs, every=10**6)  # few writes
    resumed = _resumed_from(caplog)
    assert len(resumed) == 1, sorted(p.name for p in tmp_path.rglob("*"))
    (step,) = resumed
    assert 0 < step < epochs * 3
    assert len(losses) == epochs
    ref, ref_losses = train_tiny_vae(None, epochs)
    _same(vae, ref)
    assert losses == ref_losses
