"""Batched stack training against the per-model torch.optim loop, and its rules.

The oracle is :func:`weightspace.zoo.reference.train_one`: an ``nn.Module`` trained with
``torch.optim`` on the same initial weights and sample order. Every tensor of the state
dict is compared, BatchNorm running statistics and ``num_batches_tracked`` included.
"""

import pytest
import torch
import torch.nn.functional as F

from weightspace.data import Split
from weightspace.errors import EmptyZooError, InvalidParameterError, ShapeError
from weightspace.nets import build_model
from weightspace.zoo.evaluate import evaluate_stack
from weightspace.zoo.init import init_stack
from weightspace.zoo.optim import StackedOptimizer
from weightspace.zoo.reference import train_one
from weightspace.zoo.tasks import TaskStack
from weightspace.zoo.train import StackHParams, predict_stack, train_stack

MLP = ("mlp", {"hidden": [8]})
VGG = ("vgg", {"stages": [[4]]})
VGG_BN = ("vgg", {"stages": [[4], [4]], "norm": "batch"})
RESNET = ("resnet", {"stem_channels": 4, "stages": [[4, 1]]})


def _split(n: int, seed: int, scale: float = 1.0, shape=(1, 8, 8)) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(
        torch.rand(n, *shape, generator=g) * scale, torch.randint(0, 10, (n,), generator=g)
    )


# Task sizes: the smallest is a multiple of the batch size (8); the others end with a
# partial batch (37) or stop early (24 < 37), so masking of finished members is exercised.
SPLITS = [_split(24, 0), _split(37, 1), _split(32, 2)]


def _members():
    """(task, seed, lr, weight_decay, epochs) of a heterogeneous stack."""
    return [
        (0, 0, 0.05, 0.0, 2),
        (1, 1, 0.1, 1e-3, 3),
        (2, 2, 0.02, 5e-4, 1),
        (1, 3, 0.08, 0.0, 2),
        (0, 4, 0.03, 1e-2, 3),
    ]


def _hp(members, init_scale=1.0):
    return StackHParams(
        seeds=torch.tensor([m[1] for m in members]),
        lr=torch.tensor([m[2] for m in members]),
        weight_decay=torch.tensor([m[3] for m in members]),
        epochs=torch.tensor([m[4] for m in members]),
        init_scale=torch.full((len(members),), float(init_scale)),
    )


def _train(arch, members, splits, optimizer, batch_size=8, **kwargs):
    name, config = arch
    template = build_model(name, config, splits[0].x.shape[1:], 10)
    data = TaskStack.from_splits(splits)
    task_index = torch.tensor([m[0] for m in members])
    return train_stack(
        template, _hp(members), task_index, data, batch_size, optimizer=optimizer, **kwargs
    )


def _reference(arch, member, splits, optimizer, batch_size=8, **kwargs):
    name, config = arch
    task, seed, lr, wd, epochs = member
    model = build_model(name, config, splits[0].x.shape[1:], 10)
    train_one(model, splits[task], seed, lr, wd, epochs, batch_size, optimizer=optimizer, **kwargs)
    return model.state_dict()


def _assert_matches_reference(result, arch, members, splits, optimizer, atol, **kwargs):
    for b, member in enumerate(members):
        ref = _reference(arch, member, splits, optimizer, **kwargs)
        for key, value in ref.items():
            if key.endswith("num_batches_tracked"):
                assert int(result.steps[b]) == int(value), (b, key)
                continue
            torch.testing.assert_close(
                result.final[key][b], value, atol=atol, rtol=0, msg=f"member {b}: {key}"
            )
        assert set(result.final) == {k for k in ref if not k.endswith("num_batches_tracked")}


# ---- equivalence with the per-model loop -----------------------------------------------


@pytest.mark.parametrize("arch", [MLP, VGG, VGG_BN, RESNET], ids=["mlp", "vgg", "vgg_bn", "resnet"])
def test_sgd_matches_reference(arch):
    members = _members()
    result = _train(arch, members, SPLITS, "sgd")
    _assert_matches_reference(result, arch, members, SPLITS, "sgd", atol=1e-5)
    assert result.finite.all()
    # The members really moved away from their initialisation (not a vacuous comparison).
    template = build_model(arch[0], arch[1], (1, 8, 8), 10)
    init = init_stack(template, _hp(members).seeds)
    for key in init:
        if not key.endswith(("running_var", "running_mean")):
            assert (result.final[key] - init[key]).abs().amax() > 1e-3, key


def test_sgd_steps_and_losses_match_task_sizes():
    members = _members()
    result = _train(MLP, members, SPLITS, "sgd")
    # ceil(n / 8) steps per epoch without BatchNorm.
    sizes = [24, 37, 32]
    expected = [-(-sizes[t] // 8) * e for t, _, _, _, e in members]
    assert result.steps.tolist() == expected
    assert result.train_loss.shape == (3, 5)
    assert (result.train_loss[0] > 0).all()
    assert result.train_loss[2, 0] == 0  # member 0 trains 2 epochs only
    assert result.train_loss[1, 2] == 0  # member 2 trains 1 epoch only
    assert (result.train_loss[2, [1, 4]] > 0).all()
    bn = _train(RESNET, members, SPLITS, "sgd")
    assert bn.steps.tolist() == [(sizes[t] // 8) * e for t, _, _, _, e in members]


def test_sgd_without_momentum_matches_reference():
    members = _members()[:3]
    result = _train(MLP, members, SPLITS, "sgd", momentum=0.0)
    _assert_matches_reference(result, MLP, members, SPLITS, "sgd", atol=1e-5, momentum=0.0)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_matches_reference(optimizer):
    members = [(0, 0, 1e-2, 0.0, 1), (1, 1, 3e-3, 1e-2, 2), (2, 2, 5e-3, 0.1, 2)]
    result = _train(MLP, members, SPLITS, optimizer)
    _assert_matches_reference(result, MLP, members, SPLITS, optimizer, atol=1e-4)


def test_adam_with_batchnorm_matches_reference():
    members = [(0, 0, 1e-2, 0.0, 1), (1, 1, 3e-3, 1e-2, 2)]
    result = _train(RESNET, members, SPLITS, "adam")
    _assert_matches_reference(result, RESNET, members, SPLITS, "adam", atol=1e-4)


def test_1d_inputs_match_reference():
    splits = [_split(16, 5, shape=(1, 40)), _split(21, 6, shape=(1, 40))]
    members = [(0, 0, 0.05, 0.0, 2), (1, 1, 0.05, 1e-3, 1)]
    result = _train(RESNET, members, splits, "sgd")
    _assert_matches_reference(result, RESNET, members, splits, "sgd", atol=1e-5)


def test_partial_last_batch_of_the_smallest_task_matches_reference():
    """Regression: the smallest task (20) is not a multiple of the batch size (8); its last
    batch must be averaged over its 4 real samples, not over 8 entries with padding."""
    splits = [_split(20, 0), _split(30, 1)]
    members = [(0, 0, 0.1, 0.0, 2), (1, 1, 0.1, 0.0, 2)]
    result = _train(MLP, members, splits, "sgd")
    _assert_matches_reference(result, MLP, members, splits, "sgd", atol=1e-5)


def test_member_of_a_longer_stack_equals_training_it_alone():
    members = [(0, 7, 0.05, 1e-3, 1), (1, 8, 0.05, 0.0, 3), (2, 9, 0.1, 0.0, 3)]
    stacked = _train(RESNET, members, SPLITS, "sgd")
    alone = _train(RESNET, [members[0]], SPLITS, "sgd")
    for key, value in alone.final.items():
        torch.testing.assert_close(stacked.final[key][0], value[0], atol=1e-6, rtol=0)
    assert int(stacked.steps[0]) == int(alone.steps[0]) == 3  # 24 // 8 steps, one epoch


def test_train_loss_does_not_depend_on_the_other_members():
    member = (0, 7, 0.05, 0.0, 1)  # task of 24 samples: 3 steps
    alone = _train(MLP, [member], SPLITS[:1], "sgd")
    # With a task of 37 samples (5 steps) in the stack.
    stacked = _train(MLP, [member, (1, 8, 0.05, 0.0, 1)], SPLITS[:2], "sgd")
    torch.testing.assert_close(stacked.final["1.weight"][0], alone.final["1.weight"][0])
    torch.testing.assert_close(stacked.train_loss[0, 0], alone.train_loss[0, 0])


def test_training_is_deterministic():
    members = _members()
    a = _train(VGG_BN, members, SPLITS, "adam")
    b = _train(VGG_BN, members, SPLITS, "adam")
    for key in a.final:
        assert torch.equal(a.final[key], b.final[key])
    assert torch.equal(a.train_loss, b.train_loss)


def test_snapshots_equal_shorter_training():
    members = [(0, 0, 0.05, 0.0, 3), (1, 1, 0.05, 0.0, 3)]
    result = _train(MLP, members, SPLITS, "sgd", snapshot_epochs=[1, 2, 7])
    assert sorted(result.snapshots) == [1, 2]
    short = _train(MLP, [(t, s, lr, wd, 1) for t, s, lr, wd, _ in members], SPLITS, "sgd")
    for key in short.final:
        torch.testing.assert_close(result.snapshots[1][key], short.final[key], atol=1e-6, rtol=0)
    assert result.snapshot_steps[1].tolist() == short.steps.tolist()


# ---- rules ------------------------------------------------------------------------------


def test_batchnorm_batch_larger_than_smallest_task_raises():
    with pytest.raises(InvalidParameterError, match="batch_size"):
        _train(RESNET, _members(), SPLITS, "sgd", batch_size=30)


def test_batchnorm_requires_drop_last():
    with pytest.raises(InvalidParameterError, match="drop_last"):
        _train(VGG_BN, _members(), SPLITS, "sgd", drop_last=False)


def test_drop_last_without_batchnorm():
    members = _members()
    with pytest.raises(InvalidParameterError, match="batch_size"):
        _train(MLP, members, SPLITS, "sgd", batch_size=30, drop_last=True)
    result = _train(MLP, members, SPLITS, "sgd", drop_last=True)
    _assert_matches_reference(result, MLP, members, SPLITS, "sgd", atol=1e-5, drop_last=True)
    sizes = [24, 37, 32]
    assert result.steps.tolist() == [(sizes[m[0]] // 8) * m[4] for m in members]


def test_unknown_optimizer_raises():
    with pytest.raises(InvalidParameterError, match="optimizer"):
        _train(MLP, _members(), SPLITS, "rmsprop")


def test_finite_flags_a_diverging_member_only():
    splits = [_split(32, 3, scale=1e3)]
    members = [(0, 0, 0.01, 0.0, 2), (0, 1, 1e20, 0.0, 2), (0, 2, 0.01, 0.0, 2)]
    result = _train(MLP, members, splits, "sgd")
    assert result.finite.tolist() == [True, False, True]
    assert torch.isfinite(result.final["1.weight"][0]).all()
    assert torch.isfinite(result.final["1.weight"][2]).all()


# ---- optimiser unit -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_stacked_optimizer_steps_match_torch_optim(kind):
    g = torch.Generator().manual_seed(0)
    init = torch.randn(3, 6, generator=g)
    lr = torch.tensor([0.1, 0.01, 0.05])
    wd = torch.tensor([0.0, 0.1, 0.01])
    flat = init.clone()
    opt = StackedOptimizer(flat, kind, lr, wd, momentum=0.9)
    refs = [init[b].clone().requires_grad_(True) for b in range(3)]
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    extra = {"momentum": 0.9} if kind == "sgd" else {}
    ref_opts = [
        cls([refs[b]], lr=float(lr[b]), weight_decay=float(wd[b]), foreach=False, **extra)
        for b in range(3)
    ]
    # Member 1 skips steps 1 and 2 (inactive): its parameters and moments must not move.
    activity = [[True, True, True], [True, False, True], [True, False, True], [True, True, True]]
    for step, active in enumerate(activity):
        grad = torch.randn(3, 6, generator=g)
        before = flat[1].clone()
        opt.step(grad, torch.tensor(active), all_active=all(active))
        if not active[1]:
            assert torch.equal(flat[1], before)
        for b in range(3):
            if active[b]:
                refs[b].grad = grad[b].clone()
                ref_opts[b].step()
            torch.testing.assert_close(flat[b], refs[b].detach(), atol=1e-5, rtol=1e-5)
        steps_of_1 = sum(a[1] for a in activity[: step + 1])
        assert opt.step_count.flatten().tolist() == [step + 1, steps_of_1, step + 1]


def test_stacked_optimizer_rejects_unknown_kind():
    with pytest.raises(InvalidParameterError, match="rmsprop"):
        StackedOptimizer(torch.zeros(2, 3), "rmsprop", torch.ones(2), torch.zeros(2))


# ---- task stacks, prediction, evaluation ------------------------------------------------


def test_task_stack_pads_and_gathers():
    stack = TaskStack.from_splits(SPLITS[:2])
    assert stack.x.shape == (2, 37, 1, 8, 8) and stack.y.shape == (2, 37)
    assert stack.n.tolist() == [24, 37] and stack.n_max == 37
    assert torch.equal(stack.x[0, :24], SPLITS[0].x)
    assert torch.equal(stack.x[0, 24:], torch.zeros(13, 1, 8, 8))
    x, y = stack.gather(torch.tensor([1, 0]), torch.tensor([[0, 36], [5, 23]]))
    assert torch.equal(x[0, 1], SPLITS[1].x[36]) and int(y[1, 0]) == int(SPLITS[0].y[5])
    with pytest.raises(EmptyZooError):
        TaskStack.from_splits([])
    with pytest.raises(ShapeError):
        TaskStack.from_splits([SPLITS[0], _split(5, 0, shape=(1, 40))])


def test_predict_stack_equals_per_model_forward():
    members = _members()
    result = _train(RESNET, members, SPLITS, "sgd")
    data = TaskStack.from_splits(SPLITS)
    task_index = torch.tensor([m[0] for m in members])
    template = build_model(*RESNET, (1, 8, 8), 10)
    logits = predict_stack(template, result.final, task_index, data)
    chunked = predict_stack(template, result.final, task_index, data, chunk=5)
    assert logits.shape == (5, 37, 10)
    torch.testing.assert_close(chunked, logits, atol=1e-6, rtol=0)
    for b, m in enumerate(members):
        model = build_model(*RESNET, (1, 8, 8), 10)
        state = {k: v[b] for k, v in result.final.items()}
        model.load_state_dict(state, strict=False)
        model.eval()
        n = len(SPLITS[m[0]])
        with torch.no_grad():
            torch.testing.assert_close(logits[b, :n], model(SPLITS[m[0]].x), atol=1e-5, rtol=1e-5)


def test_evaluate_stack_masks_padding():
    members = _members()
    result = _train(MLP, members, SPLITS, "sgd")
    data = TaskStack.from_splits(SPLITS)
    task_index = torch.tensor([m[0] for m in members])
    template = build_model(*MLP, (1, 8, 8), 10)
    metrics = evaluate_stack(template, result.final, task_index, {"val": data})
    assert set(metrics) == {"val_accuracy", "val_nll", "val_ece"}
    for b, m in enumerate(members):
        model = build_model(*MLP, (1, 8, 8), 10)
        model.load_state_dict({k: v[b] for k, v in result.final.items()})
        split = SPLITS[m[0]]
        with torch.no_grad():
            out = model(split.x)
        acc = (out.argmax(1) == split.y).float().mean()
        torch.testing.assert_close(metrics["val_accuracy"][b], acc, atol=1e-6, rtol=0)
        torch.testing.assert_close(
            metrics["val_nll"][b], F.cross_entropy(out, split.y), atol=1e-5, rtol=1e-5
        )
        assert 0 <= float(metrics["val_ece"][b]) <= 1
