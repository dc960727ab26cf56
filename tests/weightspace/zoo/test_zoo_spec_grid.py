"""Member identity, training configs and grid expansion."""

import dataclasses
import hashlib
import json
import re

import pytest

from weightspace.data import TaskSpec, sample_class_subsets
from weightspace.errors import EmptyZooError, InvalidParameterError
from weightspace.zoo import MemberSpec, TrainConfig, expand_grid, expand_tasks
from weightspace.zoo.grid import expand_seeds, expand_train_configs
from weightspace.zoo.spec import PROTOCOL_VERSION, canonical_json

N_CLASSES = {"digits": 10, "mnist1d": 10}


def _member(**changes) -> MemberSpec:
    base = MemberSpec(
        arch="mlp",
        task=TaskSpec("digits", classes=(0, 3)),
        seed=1,
        train=TrainConfig(),
        arch_config={"hidden": [8]},
    )
    return dataclasses.replace(base, **changes)


# ---- MemberSpec ---------------------------------------------------------------------


def test_member_id_is_stable_and_pinned():
    a, b = _member(), _member()
    assert a is not b and a.member_id == b.member_id
    assert re.fullmatch(r"[0-9a-f]{16}", a.member_id)
    # Independent oracle: the documented canonical JSON, written out by hand. If this
    # changes, every saved zoo stops matching its members (bump PROTOCOL_VERSION then).
    payload = (
        '{"arch":"mlp","arch_config":{"hidden":[8]},"data_seed":0,"protocol":PROTOCOL,"seed":1,'
        '"task":{"classes":[0,3],"dataset":"digits","transform":null,"transform_param":0.0,'
        '"transform_seed":0},"train":{"batch_size":32,"epochs":10,"init_scale":1.0,'
        '"lr":0.01,"momentum":0.9,"optimizer":"adam","weight_decay":0.0}}'
    ).replace("PROTOCOL", str(PROTOCOL_VERSION))
    assert a.member_id == hashlib.sha256(payload.encode()).hexdigest()[:16]
    if PROTOCOL_VERSION == 1:
        assert a.member_id == "62f1d45d9596cae1"


@pytest.mark.parametrize(
    "changes",
    [
        {"arch": "vgg"},
        {"arch_config": {"hidden": [9]}},
        {"arch_config": {"hidden": [8], "bias": False}},
        {"task": TaskSpec("digits", classes=(3, 0))},
        {"task": TaskSpec("digits")},
        {"task": TaskSpec("digits", classes=(0, 3), transform="noise", transform_param=0.1)},
        {"seed": 2},
        {"data_seed": 1},
        {"train": TrainConfig(lr=0.02)},
        {"train": TrainConfig(weight_decay=1e-4)},
        {"train": TrainConfig(epochs=11)},
        {"train": TrainConfig(batch_size=16)},
        {"train": TrainConfig(optimizer="sgd")},
        {"train": TrainConfig(momentum=0.5)},
        {"train": TrainConfig(init_scale=2.0)},
    ],
)
def test_any_field_change_changes_member_id(changes):
    assert _member(**changes).member_id != _member().member_id


def test_member_id_ignores_config_key_order_and_int_float_of_train():
    a = _member(arch_config={"hidden": [8], "bias": True})
    b = _member(arch_config={"bias": True, "hidden": [8]})
    assert a.member_id == b.member_id
    assert (
        _member(train=TrainConfig(lr=1, epochs=10.0)).member_id
        == _member(train=TrainConfig(lr=1.0, epochs=10)).member_id
    )


def test_member_round_trip():
    m = _member(
        task=TaskSpec("digits", classes=(1, 2, 5), transform="rotate", transform_param=90),
        train=TrainConfig(lr=0.003, optimizer="sgd", epochs=3),
        data_seed=4,
    )
    d = json.loads(json.dumps(m.to_dict()))
    back = MemberSpec.from_dict(d)
    assert back == m
    assert back.member_id == m.member_id
    assert back.to_dict() == m.to_dict()
    assert canonical_json(back.to_dict()) == canonical_json(m.to_dict())


def test_stack_key_groups_by_shared_training_settings():
    assert _member(seed=5, train=TrainConfig(lr=0.5)).stack_key() == _member().stack_key()
    assert _member(train=TrainConfig(batch_size=8)).stack_key() != _member().stack_key()
    assert _member(train=TrainConfig(optimizer="sgd")).stack_key() != _member().stack_key()


# ---- TrainConfig ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"init_scale": 0}, "init_scale"),
    ],
)
def test_train_config_rejects_bad_values(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        TrainConfig(**kwargs)


def test_train_config_normalises_types():
    c = TrainConfig(lr=1, epochs=3.0, batch_size=8.0, init_scale=2)
    assert isinstance(c.lr, float) and isinstance(c.init_scale, float)
    assert c.epochs == 3 and isinstance(c.epochs, int)
    assert c.batch_size == 8 and isinstance(c.batch_size, int)
    assert c.to_dict() == {
        "lr": 1.0, "weight_decay": 0.0, "epochs": 3, "batch_size": 8,
        "optimizer": "adam", "momentum": 0.9, "init_scale": 2.0,
    }  # fmt: skip


# ---- grid ---------------------------------------------------------------------------


def _grid(**changes):
    grid = {
        "tasks": [
            {"dataset": "digits"},
            {"dataset": "digits", "classes": [0, 1, 2]},
            {"dataset": "mnist1d", "transforms": [{"name": "noise", "param": 0.1}]},
        ],
        "architectures": [
            {"name": "mlp", "config": {"hidden": [8]}},
            {"name": "vgg", "config": {"stages": [[4]]}},
        ],
        "seeds": 2,
        "train": {"lr": [0.01, 0.003], "epochs": [1, 2], "optimizer": "sgd"},
    }
    grid.update(changes)
    return grid


def test_expand_grid_counts_and_content():
    members = expand_grid(_grid(), N_CLASSES, data_seed=3)
    assert len(members) == 2 * 3 * 2 * 4
    ids = [m.member_id for m in members]
    assert len(set(ids)) == len(ids)
    combos = {(m.arch, m.task.name, m.seed, m.train.lr, m.train.epochs) for m in members}
    assert len(combos) == len(members)
    assert {m.arch for m in members} == {"mlp", "vgg"}
    assert {m.seed for m in members} == {0, 1}
    assert {m.task.name for m in members} == {"digits", "digits[0,1,2]", "mnist1d|noise(0.1)#0"}
    assert {m.train.optimizer for m in members} == {"sgd"}
    assert {m.data_seed for m in members} == {3}
    assert {json.dumps(dict(m.arch_config)) for m in members if m.arch == "vgg"} == {
        '{"stages": [[4]]}'
    }
    # Deterministic order and content.
    assert [m.member_id for m in expand_grid(_grid(), N_CLASSES, data_seed=3)] == ids


def test_expand_grid_seed_lists_and_defaults():
    members = expand_grid(_grid(seeds=[7, 3], train={}), N_CLASSES)
    assert len(members) == 2 * 3 * 2
    assert [m.seed for m in members[:2]] == [7, 3]
    assert all(m.train == TrainConfig() for m in members)


def test_expand_grid_architecture_datasets_restrict_tasks():
    archs = [
        {"name": "mlp", "config": {"hidden": [8]}, "datasets": ["digits"]},
        {"name": "vgg", "config": {"stages": [[4]]}, "datasets": ["mnist1d"]},
    ]
    members = expand_grid(_grid(architectures=archs), N_CLASSES)
    assert {(m.arch, m.task.dataset) for m in members} == {("mlp", "digits"), ("vgg", "mnist1d")}
    assert len(members) == (2 + 1) * 2 * 4  # mlp: 2 digits tasks, vgg: 1 mnist1d task
    # Without the key every architecture takes every task (unchanged ids).
    plain = [{k: v for k, v in a.items() if k != "datasets"} for a in archs]
    assert len(expand_grid(_grid(architectures=plain), N_CLASSES)) == 2 * 3 * 2 * 4


@pytest.mark.parametrize(
    ("arch", "match"),
    [
        ({"name": "mlp", "datasets": ["cifar10"]}, "did not load"),
        ({"name": "mlp", "tasks": ["digits"]}, "unknown"),
        ({"config": {"hidden": [8]}}, "'name'"),
    ],
)
def test_expand_grid_architecture_entry_errors(arch, match):
    with pytest.raises(InvalidParameterError, match=match):
        expand_grid(_grid(architectures=[arch]), N_CLASSES)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"seeds": 0}, InvalidParameterError),
        ({"seeds": -2}, InvalidParameterError),
        ({"seeds": [1, 1]}, InvalidParameterError),
        ({"seeds": []}, InvalidParameterError),
        ({"tasks": []}, EmptyZooError),
        ({"architectures": []}, EmptyZooError),
        ({"train": {"lr": [0.01, -1]}}, InvalidParameterError),
        ({"train": {"learning_rate": 0.01}}, InvalidParameterError),
        ({"tasks": [{"dataset": "cifar10"}]}, InvalidParameterError),
    ],
)
def test_expand_grid_errors(changes, error):
    with pytest.raises(error):
        expand_grid(_grid(**changes), N_CLASSES)


@pytest.mark.parametrize("missing", ["tasks", "architectures", "seeds"])
def test_expand_grid_needs_its_sections(missing):
    grid = _grid()
    del grid[missing]
    with pytest.raises(InvalidParameterError, match=missing):
        expand_grid(grid, N_CLASSES)


def test_expand_tasks_subsets_transforms_classes_and_dedupe():
    entries = [
        {"dataset": "digits", "subsets": {"k": 3, "count": 4, "seed": 5, "exclude": [9]}},
        {"dataset": "digits", "classes": [4, 2]},
        {"dataset": "digits", "classes": [4, 2]},  # duplicate
        {
            "dataset": "digits",
            "classes": [0, 1],
            "transforms": [{"name": "rotate", "param": 90}, {"name": "invert"}],
        },
        {"dataset": "digits"},
        {"dataset": "digits", "transforms": [{"name": "noise", "param": 0.2, "seed": 3}]},
    ]
    tasks = expand_tasks(entries, N_CLASSES)
    subsets = sample_class_subsets(10, 3, 4, seed=5, exclude=(9,))
    expected = [TaskSpec("digits", classes=s) for s in subsets] + [
        TaskSpec("digits", classes=(4, 2)),
        TaskSpec("digits", classes=(0, 1), transform="rotate", transform_param=90.0),
        TaskSpec("digits", classes=(0, 1), transform="invert"),
        TaskSpec("digits"),
        TaskSpec("digits", transform="noise", transform_param=0.2, transform_seed=3),
    ]
    assert tasks == expected
    assert all(9 not in t.classes for t in tasks[:4])
    assert len({t.classes for t in tasks[:4]}) == 4


@pytest.mark.parametrize(
    ("entries", "error", "match"),
    [
        ([{"dataset": "digits", "clases": [0, 1]}], InvalidParameterError, "clases"),
        ([{"classes": [0, 1]}], InvalidParameterError, "dataset"),
        ([{"dataset": "svhn"}], InvalidParameterError, "svhn"),
        (
            [{"dataset": "digits", "classes": [0, 1], "subsets": {"k": 2, "count": 1}}],
            InvalidParameterError,
            "not both",
        ),
        ([], EmptyZooError, "no tasks"),
    ],
)
def test_expand_tasks_errors(entries, error, match):
    with pytest.raises(error, match=match):
        expand_tasks(entries, N_CLASSES)


def test_expand_train_configs_crosses_lists():
    configs = expand_train_configs(
        {"lr": [0.1, 0.2], "weight_decay": (0.0, 1e-4, 1e-3), "epochs": 2}
    )
    assert len(configs) == 6
    assert {(c.lr, c.weight_decay) for c in configs} == {
        (lr, wd) for lr in (0.1, 0.2) for wd in (0.0, 1e-4, 1e-3)
    }
    assert {c.epochs for c in configs} == {2}
    assert expand_train_configs({}) == [TrainConfig()]


def test_expand_seeds():
    assert expand_seeds(3) == [0, 1, 2]
    assert expand_seeds([5, 2]) == [5, 2]
    with pytest.raises(InvalidParameterError):
        expand_seeds([2, 2])


@pytest.mark.parametrize(
    "kwargs", [{"lr": "1e-3"}, {"epochs": 1.7}, {"batch_size": "32"}, {"lr": True}]
)
def test_train_config_rejects_wrong_types(kwargs):
    with pytest.raises(InvalidParameterError, match=next(iter(kwargs))):
        TrainConfig(**kwargs)
