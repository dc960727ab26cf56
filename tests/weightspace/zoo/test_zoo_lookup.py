"""Index look-ups of a zoo: O(1) by model id, and never stale after the index changes.

The zoo keeps a ``model_id -> position`` map checked on every use; these tests compare
every look-up with the plain boolean-mask selection it replaced, on an index that is
shuffled, replaced, edited in place and holds a repeated id.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from weightspace.errors import CheckpointMismatchError
from weightspace.zoo import Zoo
from weightspace.zoo.zoo import INDEX_COLUMNS


def _index(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    data = {c: [f"{c}-{i}" for i in order] for c in INDEX_COLUMNS}
    data["model_id"] = [f"m{i:05d}" for i in order]
    data["arch_key"] = ["arch-a" if i % 3 else "arch-b" for i in order]
    data["seed"] = [int(i) for i in order]
    return pd.DataFrame(data)


def _by_mask(index: pd.DataFrame, model_id: str) -> pd.Series:
    """The look-up the zoo used to do: a mask over the whole index, first hit."""
    hit = index[index["model_id"] == model_id]
    if hit.empty:
        raise KeyError(model_id)
    return hit.iloc[0]


def _tensors(index: pd.DataFrame) -> dict[str, dict[str, torch.Tensor]]:
    pairs = zip(index["model_id"], index["seed"], strict=True)
    return {m: {"w": torch.full((2,), float(s))} for m, s in pairs}


def test_every_row_and_cell_equals_the_mask_lookup():
    zoo = Zoo(_index(300))
    for m in zoo.model_ids:
        want = _by_mask(zoo.index, m)
        assert zoo.row(m).equals(want)
        assert zoo._value(m, "path") == want["path"]
        assert zoo._value(m, "seed") == want["seed"]


def test_a_replaced_or_reordered_index_is_remapped():
    zoo = Zoo(_index(50))
    first = zoo.model_ids[0]
    assert zoo.row(first)["seed"] == _by_mask(zoo.index, first)["seed"]
    zoo.index = zoo.index.iloc[::-1].reset_index(drop=True)  # replaced
    for m in zoo.model_ids:
        assert zoo.row(m).equals(_by_mask(zoo.index, m))
    shuffled = zoo.index.sample(frac=1.0, random_state=1).reset_index(drop=True)
    zoo.index.loc[:, :] = shuffled.to_numpy()  # reordered in place, same object
    for m in zoo.model_ids:
        assert zoo.row(m).equals(_by_mask(zoo.index, m))


def test_an_id_edited_in_place_is_found_and_the_old_one_is_gone():
    zoo = Zoo(_index(20))
    old = zoo.model_ids[3]
    zoo.row(old)  # build the map
    zoo.index.loc[3, "model_id"] = "renamed"
    assert zoo.row("renamed")["seed"] == zoo.index.loc[3, "seed"]
    with pytest.raises(KeyError, match=old):
        zoo.row(old)


def test_a_repeated_id_gives_its_first_row_and_a_missing_id_raises():
    index = _index(10)
    index.loc[7, "model_id"] = index.loc[2, "model_id"]
    zoo = Zoo(index)
    dup = zoo.index.loc[2, "model_id"]
    assert zoo.row(dup)["seed"] == zoo.index.loc[2, "seed"]
    with pytest.raises(KeyError, match="no-such-model"):
        zoo.row("no-such-model")
    with pytest.raises(KeyError, match="no-such-model"):
        zoo._value("no-such-model", "path")


def test_stack_takes_each_models_own_tensors_and_checks_the_architecture():
    index = _index(30)
    zoo = Zoo(index, tensors=_tensors(index))
    same = [m for m in zoo.model_ids if zoo._value(m, "arch_key") == "arch-a"]
    stacked = zoo.stack(same)["w"]
    seeds = torch.tensor([float(_by_mask(zoo.index, m)["seed"]) for m in same])
    assert torch.equal(stacked[:, 0], seeds)
    with pytest.raises(CheckpointMismatchError, match="one architecture"):
        zoo.stack(zoo.model_ids)
