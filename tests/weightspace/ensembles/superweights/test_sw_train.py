"""Joint training: the loss goes down, refinement and un-sharing run, runs are seeded."""

from __future__ import annotations

import pytest
import torch
from sw_members import resnet1d

from weightspace.ensembles.superweights import (
    SuperWeightEnsemble,
    SuperWeightTrainConfig,
    train_superweights,
)
from weightspace.errors import InvalidParameterError

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-1D-like toy data: the class is the position of a bump in a noisy signal."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 16, generator=g)
    for i in range(n):
        start = 1 + 5 * int(y[i])
        x[i, 0, start : start + 3] += 2.0
    return x, y


def _ensemble(seed: int = 0) -> SuperWeightEnsemble:
    members = [resnet1d(4, 2, 0), resnet1d(6, 2, 1), resnet1d(4, 1, 2)]
    return SuperWeightEnsemble(members, 0.9, seed=seed)


def test_joint_training_lowers_the_loss_and_learns_the_structure():
    x, y = _data()
    ens = _ensemble()
    n_sets, n_clusters = ens.plan.n_coefficient_sets, ens.plan.n_clusters
    config = SuperWeightTrainConfig(
        epochs=8, batch_size=32, lr=1e-2, tau=0.1, refine_epoch=1, beta=0.5, seed=0
    )
    history = train_superweights(ens, x, y, config)
    # one discarded warm-up epoch, then the refined ensemble's 8 epochs from scratch
    assert [(h["phase"], h["epoch"]) for h in history] == [("warmup", 1)] + [
        ("train", e) for e in range(1, 9)
    ]
    assert history[-1]["loss"] < 0.7 * history[1]["loss"]
    # refinement after the warm-up epoch only splits the depth bins
    assert history[0]["n_clusters"] >= n_clusters
    assert history[-1]["member_loss"] == pytest.approx(history[-1]["loss"] / 3)
    # beta clipped to the run length: un-sharing happened at the last epoch
    assert history[-1]["n_coefficient_sets"] >= n_sets
    assert ens.unique_parameter_count() <= ens.budget
    ens.eval()
    with torch.no_grad():
        acc = (ens.member_logits(x).argmax(-1) == y).float().mean()
    assert acc > 0.6


def test_without_restart_the_warmup_counts_towards_the_epochs():
    x, y = _data(48)
    config = SuperWeightTrainConfig(
        epochs=3, batch_size=16, lr=1e-2, tau=0.1, restart_after_refine=False
    )
    history = train_superweights(_ensemble(), x, y, config)
    assert [(h["phase"], h["epoch"]) for h in history] == [("train", e) for e in (1, 2, 3)]


def test_restart_resets_the_members_and_reinitialises_the_bank():
    x, y = _data(48)
    ens = _ensemble()
    initial = {k: v.clone() for k, v in ens.members.state_dict().items()}
    config = SuperWeightTrainConfig(epochs=1, batch_size=16, lr=1e-2, tau=0.1, beta=None)
    train_superweights(ens, x, y, config)
    trained = ens.members.state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)  # it did train
    bank_before = [b.detach().clone() for b in ens.bank.banks]
    ens.reset_members()
    for k, v in ens.members.state_dict().items():
        assert torch.equal(v, initial[k]), k
    assert all(torch.equal(a, b) for a, b in zip(bank_before, ens.bank.banks, strict=True))


def test_training_is_seeded():
    x, y = _data(48)
    config = SuperWeightTrainConfig(epochs=2, batch_size=16, lr=1e-2, beta=0.5, unshare_epoch=2)
    a = train_superweights(_ensemble(), x, y, config)
    b = train_superweights(_ensemble(), x, y, config)
    assert a == b


def test_bad_training_settings():
    with pytest.raises(InvalidParameterError, match="tau"):
        SuperWeightTrainConfig(tau=1.5)
    with pytest.raises(InvalidParameterError, match="beta"):
        SuperWeightTrainConfig(beta=-3.0)
    with pytest.raises(InvalidParameterError, match="optimizer"):
        SuperWeightTrainConfig(optimizer="lbfgs")
    with pytest.raises(InvalidParameterError, match="epochs"):
        SuperWeightTrainConfig(epochs=0)
