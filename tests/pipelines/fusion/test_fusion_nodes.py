"""Fusion nodes: parameters -> library configs, clear errors (the run itself is tested
end to end in tests/test_e2e_kedro.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import load_params
from weightspace.errors import EmptyZooError, InvalidParameterError
from weightspace.nets.registry import build_model
from weightspace.zoo import Zoo
from weightspace_kedro.pipelines.fusion import nodes
from weightspace_kedro.pipelines.fusion.pipeline import create_pipeline


@pytest.fixture
def settings() -> dict:
    return copy.deepcopy(load_params("test", "fusion")["fusion"]["settings"])


def test_protocol_from_test_parameters(settings):
    protocol = nodes.protocol_from(settings)
    assert protocol.ks == (2, 4)
    assert protocol.cla.balancing == "add" and protocol.cla.ot.n_samples == 50
    assert protocol.finetune.epochs == 2 and protocol.kd is not None
    assert protocol.kd_temperatures == (2.0,) and protocol.cost.max_epochs == 2
    settings["kd"]["enabled"] = False
    assert nodes.protocol_from(settings).kd is None


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("cla", "balancing", "stack", "balancing"),
        ("ot", "solver", "hungarian", "solver"),
        ("ot", "ground_metric", "cosine", "ground_metric"),
    ],
)
def test_protocol_from_rejects_bad_names(settings, section, key, value, match):
    settings[section][key] = value
    with pytest.raises(InvalidParameterError, match=match):
        nodes.protocol_from(settings)


def test_collect_parents_names_the_missing_architecture(settings):
    with pytest.raises(EmptyZooError, match=r"mlp .*digits.*zoo_fusion\.grid"):
        nodes.collect_parents(Zoo.empty(), {}, settings)


def test_fused_bundle_keys_and_metadata():
    model = build_model("mlp", {"hidden": [4]}, (1, 8, 8), 10)
    shots = {"exp": {"fused": [model], "pairs": [{"mapping": [[0]]}]}}
    bundle = nodes.fused_bundle(shots)
    assert set(bundle["tensors"]) == {f"exp/0/{k}" for k in model.state_dict()}
    assert bundle["metadata"]["exp/0"] == {"mapping": [[0]], "class": "Sequential"}
    assert torch.equal(bundle["tensors"]["exp/0/1.weight"], model.state_dict()["1.weight"])


def test_pipeline_wires_the_fusion_zoo_into_the_experiment():
    pipeline = create_pipeline()
    names = {n.name for n in pipeline.nodes}
    assert {"zoo_fusion.train_zoo", "fusion.fuse_one_shot", "fusion.report_fusion"} <= names
    assert "zoo_fusion.zoo_models" in pipeline.all_inputs() | pipeline.all_outputs()
    assert {
        "fusion.metrics",
        "fusion.tables",
        "fusion.plot_accuracy_vs_k",
    } <= pipeline.all_outputs()


def test_teacher_student_is_skipped_when_disabled(settings):
    settings["kd"]["enabled"] = False
    assert nodes.collect_teacher_student(Zoo.empty(), {}, settings) == {}
    assert nodes.distill({}, settings) == {}
    settings["kd"]["enabled"] = True
    with pytest.raises(EmptyZooError, match="mlp"):
        nodes.collect_teacher_student(Zoo.empty(), {}, settings)
