"""Data-parallel WeightFormer: 2 gloo processes, each generating the students of its share
of a step's teacher sets, follow one process with the same ``sets_per_step``: the same
losses, consistency terms and validation scores at every step (1e-5), and trained
generators whose students agree to float noise."""

from __future__ import annotations

import pytest
import torch

from dist_helpers import run_ranks
from weightspace.data.embedded import load_mnist1d
from weightspace.distributed import SINGLE, World
from weightspace.errors import InvalidParameterError
from weightspace.generators.weight_tokens import TokenLayout, tokenize
from weightspace.generators.weightformer import WeightFormer, WeightFormerConfig
from weightspace.generators.weightformer_training import FitConfig, fit_weightformer
from weightspace.nets.registry import build_model
from weightspace.weights.stacking import stack_state_dicts

CONFIG = FitConfig(steps=6, lr=3e-3, batch_size=32, eval_every=3, patience=3, n_val_sets=2,
                   resample_every=2, sets_per_step=2)  # fmt: skip


def _tokens(layout: TokenLayout, pool: dict, idx: list[int]) -> list[torch.Tensor]:
    return [t[None] for t in tokenize(layout, {k: v[idx] for k, v in pool.items()})]


def _fit(world: World, config: FitConfig = CONFIG) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    data = load_mnist1d(seed=0, n_samples=300)
    teachers = [build_model("vgg", {"stages": [[4]]}, (1, 40), 10) for _ in range(5)]
    layout = TokenLayout.from_module(teachers[0])
    pool = stack_state_dicts([t.state_dict() for t in teachers], layout.spec)
    wf = WeightFormer(layout, WeightFormerConfig(d_model=16, n_heads=2, n_blocks=1, d_ff=32,
                                                 cutoff=0.1))  # fmt: skip
    seen: list[int] = []  # generator calls on this rank
    wf.register_forward_pre_hook(lambda m, args: seen.append(1))
    res = fit_weightformer(wf, teachers[0], pool, data.train, data.val, config, world=world)
    calls = len(seen)
    with torch.no_grad():  # the trained generator's students of two fixed teacher sets
        sets = [[0, 1, 2], [4, 3, 1]]
        made = [res.model(_tokens(layout, pool, idx)) for idx in sets]
        students = torch.cat([t.flatten() for out in made for t in out])
    return {
        "students": students,
        "loss": torch.tensor(res.history["loss"]),
        "consistency": torch.tensor(res.history["consistency"]),
        "val": torch.tensor(res.history["val_accuracy"]),
        "calls": torch.tensor(calls),
    }


def test_two_ranks_follow_one_process_with_the_same_sets_per_step():
    single = _fit(SINGLE)
    ranks = run_ranks(_fit, 2)
    for status, value in ranks:
        assert status == "ok", value
        for k in ("loss", "consistency", "val"):  # the trajectory, step by step
            torch.testing.assert_close(value[k], single[k], atol=1e-5, rtol=0, msg=k)
        # The trained generators' students agree to float noise that Adam amplifies: it
        # turns the noise of gradients that are ~0 by symmetry (attention key biases, ...)
        # into lr-sized steps (students of mean size 0.2 agree to 1e-3 after 6 steps).
        torch.testing.assert_close(value["students"], single["students"], atol=1e-3, rtol=0)
    # each rank generated the students of one set per step (2 passes each: eq. 3's shift)
    # plus rank 0's validation students; one process generated both sets' students
    train_calls = 2 * CONFIG.steps
    assert ranks[1][1]["calls"] == train_calls
    assert single["calls"] - ranks[0][1]["calls"] == train_calls


def test_sets_per_step_changes_the_run_and_each_setting_is_deterministic():
    """``sets_per_step=1`` (Algorithm 1) keeps its own stream (one set, the shared
    generator for the cutoffs: checked bitwise against the code before this option
    existed when it was added); 2 sets per step is another, equally reproducible run."""
    one = FitConfig(**{**CONFIG.__dict__, "sets_per_step": 1})
    a, b = _fit(SINGLE, one), _fit(SINGLE, one)
    assert all(torch.equal(a[k], b[k]) for k in a)
    two = _fit(SINGLE)
    assert not torch.equal(a["loss"], two["loss"])
    assert float((a["students"] - two["students"]).abs().max()) > 1e-3


def test_fewer_sets_than_processes_is_refused():
    with pytest.raises(InvalidParameterError, match="sets_per_step"):
        _fit(World(rank=0, world_size=3))
