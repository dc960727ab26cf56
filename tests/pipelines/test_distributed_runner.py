"""The distributed runner: every rank runs the shared nodes, rank 0 saves and runs the rest.

A toy pipeline on 2 gloo processes: ``prepare`` (plain, upstream) -> ``share`` (tagged
distributed: it makes a collective call) -> ``summarise`` (rank 0 only). A dataset that
logs every save shows that only rank 0 wrote outputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from kedro.io import AbstractDataset, DataCatalog
from kedro.pipeline import Node, Pipeline

from dist_helpers import run_ranks
from weightspace.distributed import World
from weightspace_kedro.__main__ import RUNNER, run_args
from weightspace_kedro.hooks import check_distributed_launch
from weightspace_kedro.runner import DISTRIBUTED, DistributedRunner, split_phases


class LoggedDataset(AbstractDataset):
    """Appends ``<rank> saved <name>`` to a log file on save; loads what was saved."""

    def __init__(self, log: str, name: str) -> None:
        self._log, self._name, self._data = Path(log), name, None

    def _save(self, data: Any) -> None:
        with self._log.open("a") as f:
            f.write(f"{os.environ.get('RANK', '0')} saved {self._name}\n")
        self._data = data

    def _load(self) -> Any:
        return self._data

    def _describe(self) -> dict[str, Any]:
        return {"name": self._name}

    save = _save
    load = _load


def _log_node(log: str, what: str) -> None:
    with Path(log).open("a") as f:
        f.write(f"{os.environ.get('RANK', '0')} ran {what}\n")


def prepare(x: int, log: str) -> int:
    _log_node(log, "prepare")
    return x + 1


def share(a: int, log: str) -> list[int]:
    from weightspace_kedro.runner import node_world

    _log_node(log, "share")
    world = node_world()
    return world.gather(a * 10 + world.rank)  # a collective: every rank must be here


def summarise(b: list[int], log: str) -> int:
    _log_node(log, "summarise")
    return sum(b)


def toy_pipeline() -> Pipeline:
    return Pipeline([
        Node(prepare, ["params:x", "params:log"], "a", name="prepare"),
        Node(share, ["a", "params:log"], "b", name="share", tags=[DISTRIBUTED]),
        Node(summarise, ["b", "params:log"], "c", name="summarise"),
    ])  # fmt: skip


def _run_toy(world: World, log: str) -> Any:
    os.environ.update({"RANK": str(world.rank), "WORLD_SIZE": "2", "LOCAL_RANK":
                       str(world.rank), "LOCAL_WORLD_SIZE": "2"})  # fmt: skip
    catalog = DataCatalog({n: LoggedDataset(log, n) for n in ("a", "b", "c")})
    catalog["params:x"] = 1
    catalog["params:log"] = log
    catalog["params:device"] = "cpu"
    DistributedRunner().run(toy_pipeline(), catalog)
    return "done"


def test_split_phases():
    shared, rest = split_phases(toy_pipeline())
    assert [n.name for n in shared.nodes] == ["prepare", "share"]
    assert [n.name for n in rest.nodes] == ["summarise"]
    none, everything = split_phases(Pipeline([toy_pipeline().nodes[0]]))
    assert not none.nodes and len(everything.nodes) == 1


def test_ranks_share_the_distributed_node_and_only_rank0_saves(tmp_path):
    log = tmp_path / "log.txt"
    ranks = run_ranks(_run_toy, 2, str(log))
    assert ranks == [("ok", "done"), ("ok", "done")], ranks
    lines = sorted(log.read_text().splitlines())
    assert lines == sorted([
        "0 ran prepare", "1 ran prepare", "0 ran share", "1 ran share", "0 ran summarise",
        "0 saved a", "0 saved b", "0 saved c",
    ])  # fmt: skip


def test_plain_run_with_the_distributed_runner_is_sequential(tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    log = tmp_path / "log.txt"
    catalog = DataCatalog({n: LoggedDataset(str(log), n) for n in ("a", "b", "c")})
    catalog["params:x"], catalog["params:log"] = 1, str(log)
    DistributedRunner().run(toy_pipeline(), catalog)
    assert catalog.load("c") == 20
    assert log.read_text().count("saved") == 3


def test_module_entry_adds_the_runner_under_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert run_args(["run", "--pipeline=zoo"]) == ["--pipeline=zoo"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run_args(["run", "--pipeline=zoo"]) == ["--pipeline=zoo", f"--runner={RUNNER}"]
    assert run_args(["--runner", "X"]) == ["--runner", "X"]


def test_torchrun_without_the_distributed_runner_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="DistributedRunner"):
        check_distributed_launch({"runner": "SequentialRunner"})
    check_distributed_launch({"runner": "<weightspace_kedro.runner.DistributedRunner object>"})
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_distributed_launch({"runner": "SequentialRunner"})
