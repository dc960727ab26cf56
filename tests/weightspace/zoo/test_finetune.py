"""finetune_stack: train or fine-tune a stack, score every epoch, keep the best on val."""

from __future__ import annotations

import pytest
import torch

from weightspace.data.registry import load_dataset
from weightspace.errors import InvalidParameterError
from weightspace.nets.registry import build_model
from weightspace.zoo.finetune import FinetuneResult, finetune_stack, stack_accuracy
from weightspace.zoo.init import init_stack

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS = 3
LR = 0.05  # large enough that a member can peak before the last epoch


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def template(digits):
    torch.manual_seed(0)
    return build_model("mlp", {"hidden": [16]}, digits.input_shape, digits.n_classes)


@pytest.fixture(scope="module")
def trained(template, digits) -> FinetuneResult:
    return finetune_stack(
        template, digits, epochs=EPOCHS, lr=LR, batch_size=64,
        seeds=torch.tensor([0, 1, 2]), optimizer="adam",
    )  # fmt: skip


def _first_argmax(row: torch.Tensor) -> int:
    best = row.max()
    return next(i for i, v in enumerate(row.tolist()) if v == best)


def test_training_from_seeds_learns(trained: FinetuneResult, digits) -> None:
    b = 3
    assert trained.val_accuracy.shape == (b, EPOCHS + 1)
    assert trained.test_accuracy.shape == (b, EPOCHS + 1)
    assert trained.best_epoch.shape == (b,)
    assert trained.best_epoch.dtype == torch.long
    assert trained.seconds > 0
    chance = 1.0 / digits.n_classes
    # column 0 is the random initialisation: near chance; training lifts it well above
    assert (trained.val_accuracy[:, 0] < 0.4).all()
    assert (trained.val_accuracy[:, -1] > 5 * chance).all()
    assert (trained.val_accuracy.max(1).values > trained.val_accuracy[:, 0] + 0.3).all()
    assert (trained.test_accuracy[:, -1] > 5 * chance).all()
    # different seeds give different members
    assert not torch.equal(trained.best["1.weight"][0], trained.best["1.weight"][1])


def test_best_epoch_is_the_earliest_val_argmax(trained: FinetuneResult) -> None:
    for i, row in enumerate(trained.val_accuracy):
        assert int(trained.best_epoch[i]) == _first_argmax(row)
    expected = trained.test_accuracy[torch.arange(3), trained.best_epoch]
    assert torch.equal(trained.best_test_accuracy, expected)


def test_best_holds_the_best_epochs_weights(trained: FinetuneResult, template, digits) -> None:
    names = [n for n, _ in template.named_parameters()]
    assert sorted(trained.best) == sorted(names)
    for name, value in trained.best.items():
        assert value.shape == (3, *template.get_parameter(name).shape)
    at_best = trained.val_accuracy[torch.arange(3), trained.best_epoch]
    assert torch.allclose(stack_accuracy(template, trained.best, digits.val), at_best, atol=1e-7)
    at_best_test = trained.best_test_accuracy
    got_test = stack_accuracy(template, trained.best, digits.test)
    assert torch.allclose(got_test, at_best_test, atol=1e-7)
    # training a member for exactly its best epoch count reproduces those weights
    for i, seed in enumerate([0, 1, 2]):
        e = int(trained.best_epoch[i])
        if e == 0:
            continue
        short = finetune_stack(
            template, digits, epochs=e, lr=LR, batch_size=64, seeds=torch.tensor([seed]),
            optimizer="adam",
        )  # fmt: skip
        assert int(short.best_epoch[0]) == e
        for name, value in trained.best.items():
            assert torch.allclose(short.best[name][0], value[i], atol=1e-5), (i, name)


def test_ties_pick_the_earliest_epoch(template, digits) -> None:
    # A vanishing learning rate leaves every epoch as accurate as the initialisation.
    res = finetune_stack(
        template, digits, epochs=2, lr=1e-30, batch_size=128, seeds=torch.tensor([3, 4]),
        optimizer="sgd", momentum=0.0,
    )  # fmt: skip
    assert (res.val_accuracy == res.val_accuracy[:, :1]).all()
    assert res.best_epoch.tolist() == [0, 0]
    initial = init_stack(template, torch.tensor([3, 4]), torch.ones(2))
    for name, value in res.best.items():
        assert torch.allclose(value, initial[name], atol=1e-12, rtol=0), name
    again = finetune_stack(
        template, digits, epochs=1, lr=0.01, batch_size=128, init=res.best, optimizer="sgd"
    )
    assert torch.equal(again.val_accuracy[:, 0], res.val_accuracy[:, 0])


def test_init_path_starts_from_the_given_weights(trained: FinetuneResult, template, digits) -> None:
    init = {k: v.clone() for k, v in trained.best.items()}
    before = {k: v.clone() for k, v in init.items()}
    res = finetune_stack(template, digits, epochs=2, lr=0.001, batch_size=64, init=init)
    assert res.val_accuracy.shape == (3, 3)
    assert torch.allclose(res.val_accuracy[:, 0], stack_accuracy(template, init, digits.val))
    assert torch.allclose(res.test_accuracy[:, 0], stack_accuracy(template, init, digits.test))
    assert torch.allclose(res.val_accuracy[:, 0], trained.val_accuracy.max(1).values)
    assert all(torch.equal(before[k], v) for k, v in init.items())  # init is not modified
    # the best epoch never scores below the starting point
    best = res.val_accuracy[torch.arange(3), res.best_epoch]
    assert (best >= res.val_accuracy[:, 0]).all()


def test_errors(template, digits) -> None:
    with pytest.raises(InvalidParameterError, match=r"epochs must be >= 1, got 0"):
        finetune_stack(template, digits, epochs=0, lr=0.01, batch_size=64, seeds=[0])
    with pytest.raises(InvalidParameterError, match=r"pass init .* or seeds"):
        finetune_stack(template, digits, epochs=1, lr=0.01, batch_size=64)
