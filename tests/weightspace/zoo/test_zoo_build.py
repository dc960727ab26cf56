"""The zoo job: train, index, save, load, resume, corruption, divergence, snapshots.

One small zoo (2 tasks of the embedded digits x 2 seeds, MLP [8], 2 epochs) is trained
once per module and saved; each test works on its own copy of the saved folder.
"""

import dataclasses
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from weightspace.atomic import sha256_file
from weightspace.data import Split, SplitDataset, TaskSpec, load_dataset, make_task
from weightspace.errors import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    EmptyZooError,
    InvalidParameterError,
    NonFiniteWeightsError,
    UnknownDatasetError,
)
from weightspace.nets import ArchSpec, build_model
from weightspace.zoo import (
    MemberSpec,
    TrainConfig,
    Zoo,
    ZooRunOptions,
    checkpoint,
    expand_grid,
    train_zoo,
)
from weightspace.zoo.zoo import INDEX_COLUMNS, INDEX_FILE

CPU = ZooRunOptions(device="cpu", progress=False)
GRID = {
    "tasks": [{"dataset": "digits"}, {"dataset": "digits", "classes": [0, 1, 2]}],
    "architectures": [{"name": "mlp", "config": {"hidden": [8]}}],
    "seeds": 2,
    "train": {"epochs": 2, "lr": 0.03},
}
# Columns the design document promises in the index.
DESIGN_COLUMNS = [
    "model_id", "arch", "arch_config", "dataset", "task", "seed", "hparams", "epochs",
    "n_params", "train_accuracy", "val_accuracy", "test_accuracy", "train_nll", "val_nll",
    "test_nll", "train_ece", "val_ece", "test_ece", "path", "sha256",
]  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    return {"digits": load_dataset("digits")}


@pytest.fixture(scope="module")
def members():
    return expand_grid(GRID, {"digits": 10})


@pytest.fixture(scope="module")
def trained(digits, members, tmp_path_factory):
    """(report, saved root, in-memory states before saving, index)."""
    zoo, report = train_zoo(members, digits, options=CPU)
    states = {mid: {k: v.clone() for k, v in zoo.state(mid).items()} for mid in zoo.model_ids}
    assert all(zoo.has_tensors_in_memory(mid) for mid in zoo.model_ids)
    root = tmp_path_factory.mktemp("zoo")
    zoo.save(root)
    assert not any(zoo.has_tensors_in_memory(mid) for mid in zoo.model_ids)
    return report, root, states, zoo.index.copy()


@pytest.fixture
def root(trained, tmp_path):
    """A private copy of the saved zoo."""
    dst = tmp_path / "zoo"
    shutil.copytree(trained[1], dst)
    return dst


def _accuracy(module, split: Split) -> float:
    with torch.no_grad():
        return float((module(split.x).argmax(1) == split.y).float().mean())


# ---- index and files --------------------------------------------------------------------


def test_index_has_one_row_per_member_with_the_documented_columns(trained, members):
    report, root, _, index = trained
    assert (report.n_members, report.n_trained, report.n_reused, report.n_dropped) == (4, 4, 0, 0)
    assert report.train_seconds > 0 and report.models_per_second > 0
    assert list(index.columns) == INDEX_COLUMNS
    assert set(DESIGN_COLUMNS) <= set(index.columns)
    assert index["model_id"].tolist() == [m.member_id for m in members]
    assert index["member_id"].tolist() == [m.member_id for m in members]
    assert index["task"].tolist() == ["digits", "digits", "digits[0,1,2]", "digits[0,1,2]"]
    assert index["seed"].tolist() == [0, 1, 0, 1]
    assert index["dataset"].unique().tolist() == ["digits"]
    assert index["is_final"].all() and (index["epoch"] == 2).all() and (index["epochs"] == 2).all()
    assert (
        index["n_params"].tolist() == [64 * 8 + 8 + 8 * 10 + 10] * 2 + [64 * 8 + 8 + 8 * 3 + 3] * 2
    )
    assert index["n_classes"].tolist() == [10, 10, 3, 3]
    for _, row in index.iterrows():
        assert json.loads(row["hparams"]) == TrainConfig(epochs=2, lr=0.03).to_dict()
        assert json.loads(row["arch_config"]) == {"hidden": [8]}
        assert row["path"] == f"checkpoints/{row['model_id']}.safetensors"
        assert row["sha256"] == sha256_file(root / row["path"])
    for split in ("train", "val", "test"):
        acc = index[f"{split}_accuracy"]
        assert ((acc >= 0) & (acc <= 1)).all()
        assert (index[f"{split}_nll"] > 0).all()
        assert ((index[f"{split}_ece"] >= 0) & (index[f"{split}_ece"] <= 1)).all()
    # Well above chance: 0.1 for 10 digits, 1/3 for 3 of them.
    assert (index["test_accuracy"][:2] > 0.4).all()
    assert (index["test_accuracy"][2:] > 0.7).all()
    # The seeds give different models.
    assert index["test_nll"][0] != index["test_nll"][1]


def test_save_then_load_gives_identical_states_and_metrics(trained, root, digits):
    _, _, states, index = trained
    zoo = Zoo.load(root)
    assert zoo.model_ids == index["model_id"].tolist()
    assert zoo.verify() == ([], [])
    for mid, state in states.items():
        loaded = zoo.state(mid)
        assert set(loaded) == set(state)
        for k in state:
            assert torch.equal(loaded[k], state[k])
        row = zoo.row(mid)
        task = make_task(digits["digits"], TaskSpec.from_dict(json.loads(row["task_spec"])))
        module = zoo.module(mid)
        assert not module.training
        for split in ("train", "val", "test"):
            data = task.split(split)
            assert _accuracy(module, data) == pytest.approx(row[f"{split}_accuracy"], abs=1e-6)
        with torch.no_grad():
            nll = float(F.cross_entropy(module(task.test.x), task.test.y))
        assert nll == pytest.approx(row["test_nll"], rel=1e-4)


def test_checkpoint_rebuilds_its_member_from_the_file_alone(root, members):
    zoo = Zoo.load(root)
    for m in members:
        ckpt = checkpoint.read(zoo.file_path(m.member_id))
        assert ckpt.metadata["model_id"] == m.member_id
        assert MemberSpec.from_dict(json.loads(ckpt.metadata["member"])).member_id == m.member_id
        assert ckpt.arch == ArchSpec(
            "mlp", {"hidden": [8]}, (1, 8, 8), 10 if m.task.classes is None else 3
        )
        module = ckpt.build()
        for k, v in module.state_dict().items():
            assert torch.equal(v, zoo.state(m.member_id)[k])


def test_stack_and_select(root):
    zoo = Zoo.load(root)
    ids = zoo.model_ids[:2]
    stacked = zoo.stack(ids)
    assert stacked["1.weight"].shape == (2, 8, 64)
    assert torch.equal(stacked["3.bias"][1], zoo.state(ids[1])["3.bias"])
    with pytest.raises(CheckpointMismatchError):
        zoo.stack(zoo.model_ids)  # 10-class and 3-class heads
    with pytest.raises(EmptyZooError):
        zoo.stack([])
    sub = zoo.select(zoo.index["task"] == "digits")
    assert sub.model_ids == ids and len(sub) == 2
    with pytest.raises(KeyError):
        zoo.row("no-such-model")


def test_save_keeps_files_no_longer_listed_unless_pruned(root, caplog):
    zoo = Zoo.load(root)
    everything = sorted(p.name for p in (root / "checkpoints").iterdir())
    sub = zoo.select(zoo.index["seed"] == 0)
    sub.save(root)  # default: nothing is deleted
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == everything
    assert Zoo.load(root).model_ids == sub.model_ids
    with caplog.at_level("WARNING", logger="weightspace.zoo.zoo"):
        Zoo.load(root).save(root, prune=True)
    gone = sorted(set(everything) - {f"{m}.safetensors" for m in sub.model_ids})
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == sorted(
        f"{m}.safetensors" for m in sub.model_ids
    )
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(all(g in w for g in gone) for w in warned)


def test_save_to_another_root_copies_and_verifies(root, tmp_path):
    zoo = Zoo.load(root)
    other = tmp_path / "copy"
    zoo.save(other)
    copy = Zoo.load(other)
    assert copy.verify() == ([], [])
    for mid in zoo.model_ids:
        assert torch.equal(copy.state(mid)["1.weight"], Zoo.load(root).state(mid)["1.weight"])


# ---- resume ---------------------------------------------------------------------------


def test_resume_reuses_everything(root, members, digits):
    before = {p.name: sha256_file(p) for p in (root / "checkpoints").iterdir()}
    previous = Zoo.load(root)
    zoo, report = train_zoo(members, digits, previous=previous, options=CPU)
    assert (report.n_trained, report.n_reused, report.n_dropped) == (0, 4, 0)
    assert report.train_seconds == 0
    assert zoo.model_ids == previous.model_ids
    assert zoo.index["sha256"].tolist() == previous.index["sha256"].tolist()
    zoo.save(root)
    after = {p.name: sha256_file(p) for p in (root / "checkpoints").iterdir()}
    assert after == before  # nothing rewritten


def test_a_new_member_is_trained_the_others_reused(root, members, digits):
    extra = dataclasses.replace(members[0], seed=9)
    zoo, report = train_zoo([*members, extra], digits, previous=Zoo.load(root), options=CPU)
    assert (report.n_trained, report.n_reused) == (1, 4)
    assert zoo.model_ids[-1] == extra.member_id
    zoo.save(root)
    assert Zoo.load(root).verify() == ([], [])
    assert len(Zoo.load(root)) == 5


def test_deleted_checkpoint_is_retrained(trained, root, members, digits):
    victim = members[2].member_id
    (root / "checkpoints" / f"{victim}.safetensors").unlink()
    previous = Zoo.load(root)
    assert previous.verify() == ([victim], [])
    zoo, report = train_zoo(members, digits, previous=previous, options=CPU)
    assert (report.n_trained, report.n_reused) == (1, 3)
    assert zoo.has_tensors_in_memory(victim)
    assert [m for m in zoo.model_ids if zoo.has_tensors_in_memory(m)] == [victim]
    assert zoo.model_ids == [m.member_id for m in members]
    # Retrained alone, it draws the same initial weights and sample order as in its stack.
    for k, v in trained[2][victim].items():
        torch.testing.assert_close(zoo.state(victim)[k], v, atol=1e-6, rtol=0)
    zoo.save(root)
    assert Zoo.load(root).verify() == ([], [])


def test_retrained_member_equals_the_original_in_a_mixed_size_stack(digits):
    """Regression: two 3-class tasks of 323 and 327 training samples share one stack (same
    head size); neither is a multiple of the batch size 32, so the smaller task's last
    partial batch must be masked the same way inside the stack and alone."""
    grid = {
        "tasks": [
            {"dataset": "digits", "classes": [0, 1, 2]},
            {"dataset": "digits", "classes": [3, 4, 5]},
        ],
        "architectures": [{"name": "mlp", "config": {"hidden": [8]}}],
        "seeds": 1,
        "train": {"epochs": 1, "lr": 0.03, "optimizer": "sgd"},
    }
    members = expand_grid(grid, {"digits": 10})
    together, _ = train_zoo(members, digits, options=CPU)
    for m in members:
        alone, _ = train_zoo([m], digits, options=CPU)
        for k, v in together.state(m.member_id).items():
            torch.testing.assert_close(alone.state(m.member_id)[k], v, atol=1e-6, rtol=0)


def test_corrupt_checkpoint_raises_with_its_path(root, members, digits):
    victim = members[1].member_id
    path = root / "checkpoints" / f"{victim}.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 + 100] ^= 0x01
    path.write_bytes(bytes(data))
    previous = Zoo.load(root)
    assert previous.verify() == ([], [victim])
    with pytest.raises(CorruptCheckpointError, match="sha256"):
        previous.state(victim)
    with pytest.raises(CorruptCheckpointError) as info:
        train_zoo(members, digits, previous=previous, options=CPU)
    assert str(path) in str(info.value)
    # With on_corrupt="retrain" only that member is trained again.
    options = dataclasses.replace(CPU, on_corrupt="retrain")
    zoo, report = train_zoo(members, digits, previous=previous, options=options)
    assert (report.n_trained, report.n_reused) == (1, 3)
    assert [m for m in zoo.model_ids if zoo.has_tensors_in_memory(m)] == [victim]
    zoo.save(root)
    assert Zoo.load(root).verify() == ([], [])
    checkpoint.read(path, expected_sha256=Zoo.load(root).row(victim)["sha256"])


def test_index_without_columns_is_rejected(root):
    import pandas as pd

    index = pd.read_parquet(root / INDEX_FILE).drop(columns=["sha256"])
    index.to_parquet(root / INDEX_FILE, index=False)
    with pytest.raises(CorruptCheckpointError, match="sha256"):
        Zoo.load(root)


# ---- errors -----------------------------------------------------------------------------


def test_empty_inputs(tmp_path, digits, members):
    with pytest.raises(EmptyZooError):
        train_zoo([], digits, options=CPU)
    with pytest.raises(EmptyZooError, match=INDEX_FILE):
        Zoo.load(tmp_path)
    assert len(Zoo.empty()) == 0
    zoo, report = train_zoo(members[:1], digits, previous=Zoo.empty(), options=CPU)
    assert report.n_trained == 1 and zoo.model_ids == [members[0].member_id]


def test_duplicate_members_and_missing_datasets(digits, members):
    with pytest.raises(InvalidParameterError, match="twice"):
        train_zoo([members[0], members[0]], digits, options=CPU)
    with pytest.raises(UnknownDatasetError, match="digits"):
        train_zoo(members, {}, options=CPU)


@pytest.mark.parametrize(
    "kwargs",
    [{"on_corrupt": "ignore"}, {"on_diverge": "nan"}, {"max_stack": 0}, {"snapshot_every": -1}],
)
def test_run_options_are_validated(kwargs):
    with pytest.raises(InvalidParameterError):
        ZooRunOptions(**kwargs)


DIVERGING_GRID = {
    "tasks": [{"dataset": "digits", "classes": [0, 1]}],
    "architectures": [{"name": "mlp", "config": {"hidden": [8]}}],
    "seeds": 1,
    "train": {"epochs": 1, "lr": [0.03, 1e20], "optimizer": "sgd"},
}


def test_diverging_member_raises_by_default(digits):
    members = expand_grid(DIVERGING_GRID, {"digits": 10})
    with pytest.raises(NonFiniteWeightsError, match=members[1].member_id) as info:
        train_zoo(members, digits, options=CPU)
    assert "on_diverge" in str(info.value)
    assert members[0].member_id not in str(info.value)


def test_diverging_member_is_dropped(digits):
    members = expand_grid(DIVERGING_GRID, {"digits": 10})
    drop = dataclasses.replace(CPU, on_diverge="drop")
    zoo, report = train_zoo(members, digits, options=drop)
    assert (report.n_trained, report.n_dropped) == (1, 1)
    assert zoo.model_ids == [members[0].member_id]
    assert torch.isfinite(zoo.state(members[0].member_id)["1.weight"]).all()
    with pytest.raises(EmptyZooError):
        train_zoo(members[1:], digits, options=drop)


def test_nan_weights_in_a_saved_checkpoint_are_refused(root, members):
    zoo = Zoo.load(root)
    mid = members[0].member_id
    state = dict(zoo.state(mid))
    state["3.bias"] = state["3.bias"].clone()
    state["3.bias"][0] = float("nan")
    checkpoint.write(zoo.file_path(mid), state, zoo.arch_spec(mid), {"model_id": mid})
    with pytest.raises(NonFiniteWeightsError, match=r"3\.bias"):
        checkpoint.read(zoo.file_path(mid))
    with pytest.raises(CorruptCheckpointError):  # and the index hash no longer matches
        Zoo.load(root).state(mid)


# ---- snapshots ----------------------------------------------------------------------------


def test_snapshots(digits, members, tmp_path):
    options = dataclasses.replace(CPU, snapshot_every=1)
    zoo, report = train_zoo(members, digits, options=options)
    assert report.n_trained == 4 and len(zoo) == 8
    ids = [m.member_id for m in members]
    assert zoo.model_ids == [x for mid in ids for x in (f"{mid}-e001", mid)]
    assert zoo.index["is_final"].tolist() == [False, True] * 4
    assert zoo.index["epoch"].tolist() == [1, 2] * 4
    assert zoo.index["member_id"].tolist() == [mid for mid in ids for _ in range(2)]
    # The epoch-1 snapshot is what training the same members for one epoch gives.
    short = [dataclasses.replace(m, train=dataclasses.replace(m.train, epochs=1)) for m in members]
    one, _ = train_zoo(short, digits, options=CPU)
    for m, s in zip(members, short, strict=True):
        snap, ref = zoo.state(f"{m.member_id}-e001"), one.state(s.member_id)
        for k in ref:
            torch.testing.assert_close(snap[k], ref[k], atol=1e-6, rtol=0)
        assert zoo.row(f"{m.member_id}-e001")["test_accuracy"] == pytest.approx(
            one.row(s.member_id)["test_accuracy"], abs=1e-6
        )
        assert not torch.equal(snap["1.weight"], zoo.state(m.member_id)["1.weight"])
    # Resuming with snapshots reuses all eight checkpoints.
    zoo.save(tmp_path / "snap")
    again, report = train_zoo(
        members, digits, previous=Zoo.load(tmp_path / "snap"), options=options
    )
    assert (report.n_trained, report.n_reused) == (0, 4)
    assert again.model_ids == zoo.model_ids


def test_resume_without_snapshots_retrains_when_snapshots_are_asked(root, members, digits):
    options = dataclasses.replace(CPU, snapshot_every=1)
    zoo, report = train_zoo(members, digits, previous=Zoo.load(root), options=options)
    assert (report.n_trained, report.n_reused) == (4, 0)
    assert len(zoo) == 8


# ---- BatchNorm members on a synthetic dataset ------------------------------------------------


def _toy(n_classes: int = 3) -> SplitDataset:
    g = torch.Generator().manual_seed(0)

    def split(n):
        y = torch.arange(n) % n_classes
        x = torch.rand(n, 1, 8, 8, generator=g) * 0.3 + y[:, None, None, None] * 0.3
        return Split(x, y)

    return SplitDataset(
        "toy", split(48), split(20), split(21), n_classes, (1, 8, 8), ("a", "b", "c")
    )


def test_batchnorm_members_round_trip_with_running_stats(tmp_path):
    datasets = {"toy": _toy()}
    grid = {
        "tasks": [{"dataset": "toy"}, {"dataset": "toy", "classes": [0, 2]}],
        "architectures": [
            {"name": "resnet", "config": {"stem_channels": 4, "stages": [[4, 1]]}},
            {"name": "vgg", "config": {"stages": [[4]], "norm": "batch"}},
        ],
        "seeds": 1,
        "train": {"epochs": 2, "lr": 0.05, "batch_size": 8},
    }
    members = expand_grid(grid, {"toy": 3})
    zoo, report = train_zoo(members, datasets, options=CPU)
    assert report.n_trained == 4
    states = {mid: dict(zoo.state(mid)) for mid in zoo.model_ids}
    zoo.save(tmp_path)
    loaded = Zoo.load(tmp_path)
    for m in members:
        state = loaded.state(m.member_id)
        for k, v in states[m.member_id].items():
            assert torch.equal(state[k], v)
        n_train = 48 if m.task.classes is None else 32
        tracked = [k for k in state if k.endswith("num_batches_tracked")]
        assert tracked and all(int(state[k]) == (n_train // 8) * 2 for k in tracked)
        means = [k for k in state if k.endswith("running_mean")]
        assert any(state[k].abs().sum() > 0 for k in means)  # statistics were trained and saved
        row = loaded.row(m.member_id)
        task = make_task(datasets["toy"], m.task)
        module = loaded.module(m.member_id)
        assert _accuracy(module, task.test) == pytest.approx(row["test_accuracy"], abs=1e-6)
    # An architecture the registry cannot build fails loudly, before any training.
    bad = [dataclasses.replace(members[0], arch="transformer")]
    with pytest.raises(KeyError, match="transformer"):
        train_zoo(bad, datasets, options=CPU)


def test_batch_size_too_large_for_batchnorm_is_reported(tmp_path):
    member = MemberSpec(
        arch="resnet",
        arch_config={"stem_channels": 4, "stages": [[4, 1]]},
        task=TaskSpec("toy"),
        seed=0,
        train=TrainConfig(epochs=1, batch_size=64),
    )
    with pytest.raises(InvalidParameterError, match="batch_size"):
        train_zoo([member], {"toy": _toy()}, options=CPU)


def test_module_matches_stack_template_outputs(root, digits):
    """The stored checkpoint run through the registry module equals a fresh build."""
    zoo = Zoo.load(root)
    mid = zoo.model_ids[0]
    module = build_model("mlp", {"hidden": [8]}, (1, 8, 8), 10)
    checkpoint.load_state_strict(module, zoo.state(mid), source=mid)
    x = digits["digits"].test.x[:16]
    with torch.no_grad():
        assert torch.equal(module(x), zoo.module(mid)(x))


def test_checkpoint_metadata_identifies_a_member_with_a_data_seed(digits, tmp_path):
    grid = {**GRID, "tasks": GRID["tasks"][1:], "seeds": 1, "train": {"epochs": 1}}
    (member,) = expand_grid(grid, {"digits": 10}, data_seed=3)
    zoo, _ = train_zoo([member], digits, options=CPU)
    zoo.save(tmp_path)
    meta = checkpoint.read(zoo.file_path(member.member_id)).metadata
    assert MemberSpec.from_dict(json.loads(meta["member"])).member_id == member.member_id


def test_same_grid_same_seed_gives_identical_zoo_files(digits, members, tmp_path):
    # Determinism on CPU: the whole zoo (weights, metrics, checkpoint bytes) repeats.
    first, _ = train_zoo(members, digits, options=CPU)
    second, _ = train_zoo(members, digits, options=CPU)
    first.save(tmp_path / "a")
    second.save(tmp_path / "b")
    assert first.index["sha256"].tolist() == second.index["sha256"].tolist()
    cols = ["model_id", "test_accuracy", "test_nll", "val_ece"]
    assert first.index[cols].equals(second.index[cols])


def test_threaded_checkpoint_writes_equal_serial_ones(digits, tmp_path, monkeypatch):
    """write_checkpoints overlaps the files' fsyncs in threads for a large stack: the
    rows (in order, with their sha256) and the bytes on disk equal a serial write."""
    from weightspace.zoo import folder

    grid = {**GRID, "seeds": 6, "train": {"epochs": 1, "lr": 0.03}}
    zoo, _ = train_zoo(expand_grid(grid, {"digits": 10}), digits, options=CPU)
    rows = [dict(r) for _, r in zoo.index.iterrows()]
    tensors = {mid: zoo.state(mid) for mid in zoo.model_ids}
    written = {}
    for threads in (1000, 2):  # 1000: below the threshold, serial; 2: threaded
        monkeypatch.setattr(folder, "WRITE_THREADS", threads)
        root = tmp_path / f"t{threads}"
        out = folder.write_checkpoints(root, rows, tensors)
        assert [r["model_id"] for r in out] == [r["model_id"] for r in rows]
        written[threads] = (out, {p.name: p.read_bytes() for p in root.rglob("*.safetensors")})
    assert [r["sha256"] for r in written[2][0]] == [r["sha256"] for r in written[1000][0]]
    assert written[2][1] == written[1000][1] and len(written[2][1]) == len(rows) == 12
