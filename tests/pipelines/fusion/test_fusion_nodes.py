"""Fusion nodes and typed settings: parameters -> library configs, clear errors."""

from __future__ import annotations

import pytest
import torch
from fusion_env import load_env_params

from weightspace.errors import EmptyZooError, InvalidParameterError
from weightspace.evaluation.fusion_protocol import OneShotResult
from weightspace.evaluation.fusion_scores import OneShotScores, PairScores
from weightspace.nets.registry import build_model
from weightspace.zoo import Zoo, expand_grid
from weightspace_kedro.pipelines.fusion import nodes
from weightspace_kedro.pipelines.fusion.settings import FusionSettings


@pytest.fixture
def params() -> dict:
    return load_env_params("test")


def _build(params: dict) -> tuple[FusionSettings, dict]:
    return nodes.build_settings(params["fusion"]["settings"], params["zoo_fusion"]["grid"])


@pytest.mark.parametrize("env", ["base", "test", "gpu"])
def test_every_environment_builds_its_settings(env):
    settings, archs = _build(load_env_params(env))
    assert {e.deep for e in settings.experiments} <= set(archs)
    assert settings.cla.ot == settings.ot  # OT is configured once, used by CLAFusion too
    assert settings.kd.enabled and settings.kd.teacher in archs


def test_test_settings_merge_base_and_overrides(params):
    settings, archs = _build(params)
    assert settings.ks == (2, 4) and settings.device == "cpu"
    assert settings.ot.n_samples == 50 and settings.ot.solver == "emd"  # base kept
    assert settings.cla.ot.n_samples == 50
    assert settings.finetune_for("mlp_digits").epochs == 1  # per-experiment override
    ft = settings.finetune_for("vgg_mnist1d")
    assert (ft.epochs, ft.lr, ft.batch_size, ft.momentum) == (2, 0.01, 64, 0.9)
    assert settings.kd.temperatures == (2.0,) and settings.kd.train.epochs == 1
    assert settings.kd.train.momentum == 0.9 and settings.cost.max_epochs == 2
    assert archs["mlp_deep"].config == {"hidden": [16, 12, 8]}


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("cla", "balancing"), "stack", "balancing"),
        (("ot", "solver"), "hungarian", "solver"),
        (("ot", "ground_metric"), "cosine", "ground_metric"),
        (("finetune", "optimizer"), "lbfgs", "finetune optimizer"),
        (("cost", "max_epochs"), 0, "cost: lr must be > 0"),
        (("ks",), [1, 2], "ks must be >= 2"),
        (("headline",), "nope", "headline 'nope' is not an experiment"),
        (("cla", "ot"), {"n_samples": 10}, "once, under fusion.settings.ot"),
        (("kd", "lr"), 0.1, r"unknown key 'fusion.settings.kd.lr'"),
        (("ot", "n_sample"), 10, r"unknown key 'fusion.settings.ot.n_sample'"),
    ],
)
def test_bad_settings_fail_with_the_key(params, path, value, match):
    block = params["fusion"]["settings"]
    for key in path[:-1]:
        block = block[key]
    block[path[-1]] = value
    with pytest.raises(InvalidParameterError, match=match):
        _build(params)


def test_an_experiment_override_is_checked_up_front(params):
    params["fusion"]["settings"]["experiments"][0]["finetune"] = {"epoch": 3}
    key = "'fusion.settings.experiments[0].finetune.epoch'"
    with pytest.raises(InvalidParameterError, match=key.replace("[", r"\[").replace("]", r"\]")):
        _build(params)
    params["fusion"]["settings"]["experiments"][0]["finetune"] = {"optimizer": "rmsprop"}
    with pytest.raises(InvalidParameterError, match="finetune optimizer"):
        _build(params)


def test_architecture_keys_resolve_against_the_grid(params):
    params["fusion"]["settings"]["experiments"][1]["deep"] = "vgg_wide"
    with pytest.raises(
        InvalidParameterError, match=r"experiments\[1\]\.deep = 'vgg_wide'.*mlp_deep"
    ):
        _build(params)
    params["fusion"]["settings"]["experiments"][1]["deep"] = "mlp_deep"  # trained on digits
    with pytest.raises(InvalidParameterError, match=r"on \['digits'\] only, not on 'mnist1d'"):
        _build(params)
    grid = params["zoo_fusion"]["grid"]
    grid["architectures"][1]["key"] = "mlp_deep"
    with pytest.raises(InvalidParameterError, match="key 'mlp_deep' is used twice"):
        _build(params)


def test_grid_keys_do_not_change_zoo_member_ids(params):
    grid = params["zoo_fusion"]["grid"]
    plain = {**grid, "architectures": [
        {k: v for k, v in a.items() if k != "key"} for a in grid["architectures"]
    ]}  # fmt: skip
    n_classes = {"digits": 10, "mnist1d": 10}
    ids = [m.member_id for m in expand_grid(grid, n_classes)]
    assert ids == [m.member_id for m in expand_grid(plain, n_classes)]


def test_collect_parents_names_the_missing_architecture(params):
    settings, archs = _build(params)
    with pytest.raises(EmptyZooError, match=r"'mlp_deep' \(mlp .*digits.*zoo_fusion\.grid"):
        nodes.collect_parents(Zoo.empty(), {}, settings, archs)


def test_teacher_student_is_skipped_when_disabled(params):
    params["fusion"]["settings"]["kd"]["enabled"] = False
    settings, archs = _build(params)
    assert "mlp_deep" in archs  # still referenced by the experiments
    assert nodes.collect_teacher_student(Zoo.empty(), {}, settings, archs) == {}
    assert nodes.distill({}, settings) == {}
    settings, archs = _build(load_env_params("test"))
    with pytest.raises(EmptyZooError, match="mlp"):
        nodes.collect_teacher_student(Zoo.empty(), {}, settings, archs)


def test_fused_bundle_keys_and_metadata():
    model = build_model("mlp", {"hidden": [4]}, (1, 8, 8), 10)
    pair = PairScores(*([0.5] * 11), mapping=((0,),))
    shot = OneShotResult(OneShotScores((pair,), ()), [model], [model], {})
    bundle = nodes.fused_bundle({"exp": shot})
    assert set(bundle["tensors"]) == {f"exp/0/{k}" for k in model.state_dict()}
    assert bundle["metadata"]["exp/0"] == {"mapping": [[0]], "class": "Sequential"}
    assert torch.equal(bundle["tensors"]["exp/0/1.weight"], model.state_dict()["1.weight"])
