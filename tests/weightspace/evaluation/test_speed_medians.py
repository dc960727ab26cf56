"""Speed figures are medians of repeated timings, and time-to-accuracy stops on the
validation split, never on the test split."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from weightspace.data import SplitDataset, TaskSpec, load_dataset, make_task
from weightspace.data.base import Split
from weightspace.errors import InvalidParameterError
from weightspace.evaluation import speed

pytestmark = pytest.mark.usefixtures("one_thread")


class _Clock:
    """A fake ``time.perf_counter`` that a test advances."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _sampler(clock: _Clock, durations: list[float], calls: list[tuple[int, int]]):
    """A sampler whose k-th call takes ``durations[k]`` fake seconds."""

    def sample(sets: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        clock.now += durations[len(calls)]
        calls.append((len(sets), n))
        return {"w": torch.zeros(len(sets) * n, 3)}

    return sample


def test_throughput_is_the_median_of_repeated_calls_after_a_warm_up(monkeypatch):
    clock, calls = _Clock(), []
    monkeypatch.setattr(speed.time, "perf_counter", clock)
    # warm-up 100 s (ignored), then 5 timed calls of 12 models each
    sampler = _sampler(clock, [100.0, 4.0, 1.0, 3.0, 6.0, 2.0], calls)
    t = speed.throughput_timings(sampler, torch.zeros(4, 2), 3, lambda: None)
    assert calls == [(4, 3)] * 6  # the warm-up has the size of the timed calls
    assert t.seconds == (4.0, 1.0, 3.0, 6.0, 2.0) and t.n_models == 12
    assert t.per_second == pytest.approx(12 / 3.0)  # median call, not the first or the mean
    assert t.median_seconds == pytest.approx(3.0)
    calls.clear()
    clock.now = 0.0
    sampler = _sampler(clock, [100.0, 4.0, 1.0, 3.0], calls)
    rate = speed.generation_throughput(sampler, torch.zeros(4, 2), 3, lambda: None, repeats=3)
    assert rate == pytest.approx(12 / 3.0) and len(calls) == 4  # the float API of old callers
    with pytest.raises(InvalidParameterError, match="repeats"):
        speed.throughput_timings(sampler, torch.zeros(4, 2), 3, lambda: None, repeats=0)


def _onehot_task(test_labels_shift: int) -> SplitDataset:
    """x = one-hot of the class; the test split's labels are shifted (a model that is
    perfect on val is then wrong on every test sample)."""
    y = torch.arange(4).repeat(5)
    x = nn.functional.one_hot(y, 4).float()
    test = Split(x, (y + test_labels_shift) % 4)
    return SplitDataset("onehot", Split(x, y), Split(x, y), test, 4, (4,), tuple("abcd"))


def test_time_to_match_stops_on_validation_and_reports_the_median(monkeypatch):
    """The stop rule reads validation accuracy: a model that is perfect on val and wrong
    on every test sample stops at once (a test-split rule would never stop)."""
    task = _onehot_task(test_labels_shift=1)
    run_seconds = iter([3.0, 1.0, 2.0])

    def fake_train_one(model, split, seed, lr, wd, epochs, batch_size, on_epoch_end):
        with torch.no_grad():
            model.weight.copy_(torch.eye(4))
            model.bias.zero_()
        elapsed = next(run_seconds)
        for epoch in range(1, epochs + 1):
            if on_epoch_end(epoch, model, elapsed * epoch):
                break
        return model

    monkeypatch.setattr(speed, "train_one", fake_train_one)
    t = speed.time_to_match(lambda: nn.Linear(4, 4), task, 1.0, 0.1, 8, max_epochs=5)
    assert t.seconds == (3.0, 1.0, 2.0) and t.epochs == (1, 1, 1)
    assert t.median_seconds == 2.0 and t.median_epochs == 1
    # the old tuple API returns the median
    run_seconds = iter([3.0, 1.0, 2.0])
    assert speed.seconds_to_match(lambda: nn.Linear(4, 4), task, 1.0, 0.1, 8) == (2.0, 1)


def test_time_to_match_trains_for_real_and_reports_unreached_targets():
    digits = load_dataset("digits", seed=0)
    task = make_task(digits, TaskSpec("digits", classes=(0, 1)))

    def linear() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 2))

    t = speed.time_to_match(linear, task, 0.9, 0.01, 32, max_epochs=20, repeats=2)
    assert len(t.seconds) == 2 and all(0 < s < math.inf for s in t.seconds)
    assert t.epochs[0] == t.epochs[1] >= 1  # the reference loop is deterministic
    never = speed.time_to_match(linear, task, 1.01, 0.01, 32, max_epochs=2, repeats=1)
    assert never.seconds == (math.inf,) and never.epochs == (2,)
