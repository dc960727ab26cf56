"""Fault injection for fusion: bad ``fusion.settings`` fail in the pipeline's first node
(in well under a second, naming the key and the file), and the three fusion entry points
refuse K < 2, non-finite weights, mixed activations and an empty list with clear errors;
the exact OT solver's non-convergence is an error (or, when asked, a warning)."""

from __future__ import annotations

import copy
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from conftest import merged_params
from weightspace.data.base import Split, SplitDataset
from weightspace.errors import (
    ArchitectureMismatchError,
    InvalidParameterError,
    NonFiniteWeightsError,
)
from weightspace.evaluation import fusion_protocol as fp
from weightspace.fusion import (
    OTFusionConfig,
    TransportNotConvergedError,
    clafusion,
    otfusion,
    transport_map,
    vanilla_average,
)
from weightspace.fusion.otfusion import emd_iteration_limit
from weightspace.nets.mlp import build_mlp
from weightspace_kedro.pipelines.fusion import nodes
from weightspace_kedro.pipelines.fusion.settings import ExperimentSettings, FusionSettings

SHAPE = (1, 4, 4)
FIRST_NODE_SECONDS = 1.0
"""A bad setting must fail in the settings node in well under this."""


# --------------------------------------------------------------------------------------
# settings: the first node
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_params() -> dict:
    """``--env test`` parameters (conf/base soft-merged with conf/test)."""
    return merged_params("test")


def _with(params: dict, path: str, value) -> dict:
    """A deep copy of ``params`` with ``fusion.settings.<path>`` set (list indices ok)."""
    out = copy.deepcopy(params)
    block = out["fusion"]["settings"]
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        block = block[key]
    block[keys[-1]] = value
    return out


BAD_SETTINGS = [
    ("finetune.lr", -0.05, "finetune.lr=-0.05"),
    ("finetune.lr", float("nan"), "finetune.lr=nan"),
    ("finetune.lr", float("inf"), "finetune.lr=inf"),
    ("finetune.lr", "-0.05", "'fusion.settings.finetune.lr' must be a float"),  # CLI string
    ("ks", [], "fusion.settings.ks must list >= 1"),
    ("ks", [1], "fusion.settings.ks[0] = 1"),
    ("ks", [2.5], "'fusion.settings.ks[0]' must be a int"),
    ("ks", [2, 2], "must not repeat"),
    ("ks", [2, 8], "zoo_fusion.grid.seeds trains 3"),  # cross-field: K <= 2 x seeds
    ("finetune.epochs", 0, "finetune.epochs=0"),
    ("finetune.batch_size", 0, "finetune.batch_size=0"),
    ("finetune.momentum", 1.5, "finetune.momentum must be in [0, 1)"),
    ("finetune.optimizer", "lbfgs", "('adam', 'adamw', 'sgd')"),
    ("cost.max_epochs", 0, "cost.max_epochs=0"),
    ("finetune.lrr", 0.1, "unknown key 'fusion.settings.finetune.lrr'"),
    ("ot.n_samples", "many", "'fusion.settings.ot.n_samples' must be a int"),
    ("ot.solver", "hungarian", "('emd', 'sinkhorn')"),
    ("ot.on_unconverged", "ignore", "('error', 'warn')"),
    ("ot.emd_max_iter", 0, "emd_max_iter must be an integer"),
    ("kd.alphas", [1.5], "kd.alphas must lie in [0, 1]"),
    ("kd.temperatures", [-2.0], "kd.temperatures must be finite and > 0"),
    ("device", "gpux", "fusion.settings.device must be one of"),
    ("progress", "yes", "'fusion.settings.progress' must be a bool"),
    ("experiments.0.finetune", {"lr": -1.0}, "fusion.settings.experiments[0].finetune"),
    ("cla.balancing", "merge", "MLPs only"),  # cross-field: the vgg experiment
]


@pytest.mark.parametrize(
    ("path", "value", "fragment"), BAD_SETTINGS, ids=[f"{p}={v!r}" for p, v, _ in BAD_SETTINGS]
)
def test_a_bad_setting_fails_in_the_first_node(test_params, path, value, fragment):
    params = _with(test_params, path, value)
    start = time.perf_counter()
    with pytest.raises(InvalidParameterError) as info:
        nodes.build_settings(params["fusion"]["settings"], params["zoo_fusion"]["grid"])
    seconds = time.perf_counter() - start
    message = str(info.value)
    assert fragment in message
    assert "fusion.settings" in message and "parameters_fusion.yml" in message
    assert seconds < FIRST_NODE_SECONDS, f"the settings node took {seconds:.2f} s"


def test_an_unknown_key_lists_the_allowed_keys(test_params):
    params = _with(test_params, "ot.numitermax", 10)
    with pytest.raises(InvalidParameterError) as info:
        nodes.build_settings(params["fusion"]["settings"], params["zoo_fusion"]["grid"])
    message = str(info.value)
    assert "'fusion.settings.ot.numitermax'" in message
    assert "allowed keys" in message and "'emd_max_iter'" in message
    assert "conf/base" in message


def test_the_shipped_settings_still_build(test_params):
    settings, _ = nodes.build_settings(
        test_params["fusion"]["settings"], test_params["zoo_fusion"]["grid"]
    )
    assert settings.progress is False and settings.ot.on_unconverged == "error"
    assert settings.ot.emd_max_iter is None and settings.cla.ot == settings.ot


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: fp.FinetuneConfig(lr=-0.05), "finetune.lr=-0.05"),
        (lambda: fp.FinetuneConfig(epochs=0), "finetune.epochs=0"),
        (lambda: fp.CostConfig(batch_size=0), "cost.batch_size=0"),
        (lambda: OTFusionConfig(reg=float("nan")), "reg must be > 0 and finite"),
        (lambda: OTFusionConfig(on_unconverged="ignore"), "on_unconverged must be one of"),
        (
            lambda: FusionSettings(experiments=(_experiment(),), ks=()),
            "fusion.settings.ks must list >= 1",
        ),
    ],
)
def test_the_library_dataclasses_refuse_the_same_values(build, fragment):
    with pytest.raises(InvalidParameterError, match=fragment.replace("[", r"\[")):
        build()


def _experiment() -> ExperimentSettings:
    return ExperimentSettings(name="e", dataset="digits", deep="a", shallow="b")


# --------------------------------------------------------------------------------------
# the three fusion entry points
# --------------------------------------------------------------------------------------


def _mlps(k: int = 2, hidden=(6, 5), activation: type[nn.Module] = nn.ReLU) -> list[nn.Module]:
    torch.manual_seed(0)
    models = [build_mlp(SHAPE, 3, list(hidden)) for _ in range(k)]
    for m in models:
        for i, layer in enumerate(m):
            if isinstance(layer, nn.ReLU):
                m[i] = activation()
    return models


def _x() -> torch.Tensor:
    return torch.randn(40, *SHAPE, generator=torch.Generator().manual_seed(1))


METHODS = {
    "otfusion": lambda models: otfusion(models, _x()),
    "clafusion": lambda models: clafusion(models, _x()),
    "vanilla_average": vanilla_average,
}


@pytest.mark.parametrize("method", list(METHODS))
def test_one_model_is_not_a_fusion(method):
    with pytest.raises(InvalidParameterError, match=rf"{method} needs >= 2 models.*got 1 model"):
        METHODS[method](_mlps(1))


@pytest.mark.parametrize("method", list(METHODS))
def test_an_empty_list_is_a_clear_error(method):
    with pytest.raises(InvalidParameterError, match=r"needs >= 2 models.*an empty list"):
        METHODS[method]([])


@pytest.mark.parametrize("method", list(METHODS))
def test_nan_in_the_output_layer_names_model_and_layer(method):
    models = _mlps(3)
    with torch.no_grad():
        models[2][3].weight[1, 2] = float("nan")  # the output layer of model 2
    with pytest.raises(NonFiniteWeightsError) as info:
        METHODS[method](models)
    message = str(info.value)
    assert "model 2" in message and "'3.weight'" in message and "layer '3' (Linear)" in message
    assert "1 NaN" in message


@pytest.mark.parametrize("method", list(METHODS))
def test_inf_in_a_hidden_layer_names_model_and_layer(method):
    models = _mlps(2)
    with torch.no_grad():
        models[1][1].bias[0] = float("inf")  # the first hidden layer of model 1
    with pytest.raises(NonFiniteWeightsError, match=r"model 1 .*'1\.bias' \(layer '1' \(Linear\)"):
        METHODS[method](models)


@pytest.mark.parametrize("method", list(METHODS))
def test_tanh_and_relu_networks_do_not_fuse(method):
    relu, tanh = _mlps(1)[0], _mlps(1, activation=nn.Tanh)[0]
    with pytest.raises(ArchitectureMismatchError) as info:
        METHODS[method]([relu, tanh])
    message = str(info.value)
    assert "Tanh" in message and "ReLU" in message
    assert "model 1" in message and "model 0" in message


def test_tanh_against_relu_of_another_depth_in_clafusion():
    deep = _mlps(1, hidden=(6, 5, 4))[0]
    shallow = _mlps(1, hidden=(6,), activation=nn.Tanh)[0]
    with pytest.raises(ArchitectureMismatchError, match=r"model 1 uses Tanh.*model 0 uses ReLU"):
        clafusion([deep, shallow], _x())


def test_samples_with_nan_are_refused():
    x = _x()
    x[3, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidParameterError, match="samples x contain NaN"):
        otfusion(_mlps(2), x)


# --------------------------------------------------------------------------------------
# exact OT: an iteration limit that scales, non-convergence is an error
# --------------------------------------------------------------------------------------


def _cost(n: int = 30) -> torch.Tensor:
    return torch.rand(n, n, generator=torch.Generator().manual_seed(2))


def test_emd_iteration_limit_scales_with_the_layer():
    assert emd_iteration_limit(10, 10) == 100_000  # POT's default as the floor
    assert emd_iteration_limit(2048, 2048) >= 2048 * 2048
    assert emd_iteration_limit(100_000, 100_000) == 2**31 - 1  # the solver's C int
    assert emd_iteration_limit(2048, 2048, max_iter=7) == 7


def test_emd_non_convergence_is_an_error_by_default():
    with pytest.raises(TransportNotConvergedError, match=r"numItermax=5 .*emd_max_iter"):
        transport_map(_cost(), max_iter=5)


def test_emd_non_convergence_warns_when_asked():
    with pytest.warns(RuntimeWarning, match=r"did not converge.*largest marginal error"):
        plan = transport_map(_cost(), max_iter=5, on_unconverged="warn")
    assert plan.shape == (30, 30) and torch.isfinite(plan).all()
    exact = transport_map(_cost())  # the default limit converges: exact marginals
    assert torch.allclose(exact.sum(1), torch.full((30,), 1 / 30, dtype=torch.float64))


def test_otfusion_reports_the_unconverged_layer_solver():
    models = _mlps(2, hidden=(24, 5))
    config = OTFusionConfig(emd_max_iter=3)
    with pytest.raises(TransportNotConvergedError, match="24 x 24"):
        otfusion(models, _x(), config=config)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        fused = otfusion(models, _x(), config=OTFusionConfig(emd_max_iter=3, on_unconverged="warn"))
    assert isinstance(fused, nn.Sequential)


def test_a_larger_limit_does_not_change_a_converged_plan():
    cost = _cost(40)
    assert torch.equal(transport_map(cost), transport_map(cost, max_iter=100_000))


# --------------------------------------------------------------------------------------
# progress bars
# --------------------------------------------------------------------------------------


def _blobs(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return Split(torch.randn(n, *SHAPE, generator=g) + y[:, None, None, None], y)


def test_finetuning_shows_a_progress_bar_that_can_be_disabled(monkeypatch, capsys):
    def fake_retrain(models, dataset, cfg, seed, from_scratch=False, device="cpu"):
        b = len(models)
        return SimpleNamespace(
            best_test_accuracy=torch.full((b,), 0.5), val_accuracy=torch.zeros(b, cfg.epochs + 1)
        )

    monkeypatch.setattr(fp, "retrain", fake_retrain)
    models = _mlps(2)
    shot = SimpleNamespace(fused=models, depth_aligned=models, k_fused={2: models[0]})
    dataset = SplitDataset("blobs", _blobs(30, 1), _blobs(9, 2), _blobs(9, 3), 3, SHAPE, "abc")
    cfg = fp.FinetuneConfig(epochs=2)
    fp.finetune_comparison(models, models, shot, dataset, cfg, progress=True, desc="exp")
    assert "exp: finetune" in capsys.readouterr().err
    fp.finetune_comparison(models, models, shot, dataset, cfg, progress=False, desc="exp")
    assert "exp: finetune" not in capsys.readouterr().err


def test_the_cost_run_shows_epochs(capsys):
    dataset = SplitDataset("blobs", _blobs(60, 1), _blobs(20, 2), _blobs(20, 3), 3, SHAPE, "abc")
    cfg = fp.CostConfig(max_epochs=2, batch_size=16)
    epochs, _, reached = fp.time_to_accuracy(_mlps(1)[0], dataset, 1.01, cfg, progress=True)
    assert (epochs, reached) == (2, False)
    assert "fusion: cost" in capsys.readouterr().err
    assert np.isfinite(epochs)
