"""Issue 11 fixes of the D2NWG pipeline: data seed, checkpoint key order, thread count.

1. Scenario (b)'s networks carry the zoo's data seed in their member ids (another split
   trains other networks), ``conf/base`` derives that seed from the scenario's seed, and
   the two keys cannot silently disagree.
2. A checkpoint loads with the same key order, and so the same numbers, in every process
   (safetensors itself returns its tensors in a per-process random order).
3. The class pool of scenario (a) is named by its provenance (data, held-out classes,
   extractor weights), never by the float bits of its features: the torch thread count
   cannot change which zoo of heads is trained.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, merged_params
from weightspace.data import load_dataset
from weightspace.data.class_pool import build_class_pool, pool_dataset, pool_name
from weightspace.data.features import FrozenFeatureExtractor
from weightspace.errors import InvalidParameterError
from weightspace.nets.registry import build_model
from weightspace.zoo import ZooRunOptions, expand_grid, train_zoo
from weightspace_kedro.pipelines.d2nwg import networks
from weightspace_kedro.pipelines.zoo import nodes as zoo_nodes

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- 1. data seed
def _networks_members(seed: int):
    zp = merged_params("test")["zoo_d2nwg_networks"]
    data = {**zp["data"], "seed": seed}
    datasets = zoo_nodes.load_datasets(data)
    return zoo_nodes.plan_members(datasets, zp["grid"], data), datasets


def test_another_data_seed_gives_other_networks_member_ids():
    members0, _ = _networks_members(0)
    members1, _ = _networks_members(1)
    assert [m.data_seed for m in members0] == [0] * len(members0)
    assert [m.data_seed for m in members1] == [1] * len(members1)
    ids0, ids1 = [m.member_id for m in members0], [m.member_id for m in members1]
    assert len(set(ids0)) == len(ids0) == len(ids1) == 6
    assert not set(ids0) & set(ids1)  # no network trained on split 0 is reused for split 1


def test_conf_base_derives_the_networks_data_seed_from_the_scenario_seed(tmp_path):
    from kedro.config import OmegaConfigLoader

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf, ignore=shutil.ignore_patterns("local"))
    path = conf / "base" / "parameters_d2nwg.yml"
    text = path.read_text()
    block = "d2nwg_networks:\n  settings:\n    seed: 0\n"
    assert text.count(block) == 1
    path.write_text(text.replace(block, block.replace("seed: 0", "seed: 3")))
    for env in ("test", "gpu"):
        params = OmegaConfigLoader(
            str(conf), base_env="base", default_run_env=env,
            merge_strategy={"parameters": "soft"},
        )["parameters"]  # fmt: skip
        assert params["d2nwg_networks"]["settings"]["seed"] == 3
        assert params["zoo_d2nwg_networks"]["data"]["seed"] == 3
    # `kedro run --params d2nwg_networks.settings.seed=4` sets both
    params = OmegaConfigLoader(
        str(ROOT / "conf"), base_env="base", default_run_env="test",
        merge_strategy={"parameters": "soft"},
        runtime_params={"d2nwg_networks": {"settings": {"seed": 4}}},
    )["parameters"]  # fmt: skip
    assert params["zoo_d2nwg_networks"]["data"]["seed"] == 4


def test_scenario_seed_and_data_seed_cannot_disagree():
    settings = merged_params("test")["d2nwg_networks"]["settings"]
    s = networks.build_settings(settings, {"seed": 0})
    assert s.seed == 0
    with pytest.raises(InvalidParameterError) as info:
        networks.build_settings(settings, {"seed": 1})
    message = str(info.value)
    assert "d2nwg_networks.settings.seed (0)" in message
    assert "zoo_d2nwg_networks.data.seed (1)" in message
    # the node that sees the zoo's members checks them too (the pipeline's wiring today)
    members, datasets = _networks_members(1)
    with pytest.raises(InvalidParameterError, match=r"settings\.seed \(0\).*data\.seed \(1\)"):
        networks.zoo_tasks(members, datasets, s)
    tasks = networks.zoo_tasks(members, datasets, networks.build_settings({**settings, "seed": 1}))
    assert len(tasks.names) == 3


# ---------------------------------------------------------------- 2. key order
_LOAD = """
import json, sys
import torch
from weightspace.zoo import Zoo
from weightspace.zoo.checkpoint import read
from weightspace.weights.stacking import stack_state_dicts
zoo = Zoo.load(sys.argv[1])
ids = zoo.model_ids
state = read(zoo.file_path(ids[0])).state
stacked = zoo.stack(ids)
flat = torch.cat([t.flatten(1) for t in stack_state_dicts([state]).values()], 1)[0]
weights = torch.linspace(0.0, 1.0, flat.numel())
print(json.dumps({
    "read": list(state), "stack": list(stacked), "module": list(zoo.module(ids[0]).state_dict()),
    "value": float((flat * weights).sum()).hex(),
}))
"""


def test_checkpoint_keys_load_in_one_order_in_every_process(tmp_path):
    grid = {
        "tasks": [{"dataset": "digits"}],
        "architectures": [{"name": "mlp", "config": {"hidden": [8, 8, 8]}}],
        "seeds": 2,
        "train": {"epochs": 1, "batch_size": 128},
    }
    members = expand_grid(grid, {"digits": 10})
    zoo, _ = train_zoo(
        members, {"digits": load_dataset("digits")}, options=ZooRunOptions("cpu", progress=False)
    )
    zoo.save(tmp_path / "zoo")
    expected = list(zoo.arch_spec(zoo.model_ids[0]).build().state_dict())
    assert len(expected) == 8  # 8! orders: a random one matches by chance 1 in 40,320
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _LOAD, str(tmp_path / "zoo")],
            env={**env, "PYTHONHASHSEED": seed}, stdout=subprocess.PIPE, text=True,
        )
        for seed in ("1", "2")
    ]  # fmt: skip
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    for out in outs:
        assert out["read"] == out["stack"] == out["module"] == expected
    assert outs[0]["value"] == outs[1]["value"]


# ---------------------------------------------------------------- 3. thread count
def _extractor(seed: int = 0) -> FrozenFeatureExtractor:
    torch.manual_seed(seed)
    return FrozenFeatureExtractor(build_model("vgg", {"stages": [[4], [8]]}, (1, 8, 8), 7))


def _pool(extractor: FrozenFeatureExtractor, data_seed: int = 0, novel=(7, 8, 9)):
    return build_class_pool(
        {"digits": load_dataset("digits", seed=data_seed)}, {"digits": extractor},
        {"digits": novel},
    )  # fmt: skip


def test_pool_name_is_the_same_with_one_and_two_threads():
    extractor = _extractor()
    threads = torch.get_num_threads()
    try:
        pools = []
        for n in (1, 2):
            torch.set_num_threads(n)
            pools.append(_pool(extractor))
    finally:
        torch.set_num_threads(threads)
    assert pools[0].dataset.name == pools[1].dataset.name
    assert pools[0].provenance == pools[1].provenance
    assert pool_dataset(pools[0].dataset).name == pools[0].dataset.name  # the heads' dataset


def test_pool_name_ignores_the_float_rounding_of_the_features(monkeypatch):
    """Another thread count (or CPU, or device) may round the features differently: the
    pool keeps its name, so the heads zoo is not retrained."""
    extractor = _extractor()
    first = _pool(extractor)
    forward = FrozenFeatureExtractor.forward
    monkeypatch.setattr(
        FrozenFeatureExtractor, "forward",
        lambda self, x: torch.nextafter(forward(self, x), torch.tensor(float("inf"))),
    )  # fmt: skip
    second = _pool(extractor)
    assert not torch.equal(first.dataset.train.x, second.dataset.train.x)
    assert first.dataset.name == second.dataset.name
    assert pool_name(second.dataset) == first.dataset.name


def test_pool_name_follows_its_provenance():
    """Other extractor weights, another split or other novel classes: another pool."""
    extractor = _extractor()
    base = _pool(extractor).dataset.name
    assert base.startswith("pool-") and len(base) == 15
    with torch.no_grad():
        next(extractor.parameters()).view(-1)[0] += 1e-3
    others = [_pool(extractor).dataset.name, _pool(_extractor(), data_seed=1).dataset.name,
              _pool(_extractor(), novel=(6, 8, 9)).dataset.name]  # fmt: skip
    assert len({base, *others}) == 4
    assert _pool(_extractor()).dataset.name == base
