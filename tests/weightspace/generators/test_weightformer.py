"""WeightFormer's generator and MLP baseline: gradients reach every parameter, the
``[cross]`` state carries layer l into layer l + 1, shift consistency is exactly zero for
identical teachers without cutoff, the MLP baseline starts at the teachers' mean."""

from __future__ import annotations

import pytest
import torch

from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.generators.weight_tokens import TokenLayout, tokenize
from weightspace.generators.weightformer import (
    LayerMLP,
    WeightFormer,
    WeightFormerConfig,
    shift_consistency,
    student_logits,
    student_state,
)
from weightspace.nets.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _teachers(n: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    return [build_model("vgg", {"stages": [[4], [6]]}, (1, 16), 5) for _ in range(n)]


def _tokens(teachers) -> list[torch.Tensor]:
    layout = TokenLayout.from_module(teachers[0])
    return [t[None] for t in tokenize(layout, [m.state_dict() for m in teachers])]


def _config(**kw) -> WeightFormerConfig:
    return WeightFormerConfig(**{"d_model": 16, "n_heads": 2, "n_blocks": 1, "d_ff": 32, **kw})


def test_every_generator_parameter_gets_a_gradient_from_the_data_loss():
    teachers = _teachers()
    layout = TokenLayout.from_module(teachers[0])
    wf = WeightFormer(layout, _config(cutoff=0.25)).train()
    x, y = torch.randn(8, 1, 16), torch.randint(0, 5, (8,))
    state = student_state(layout, wf(_tokens(teachers), torch.Generator().manual_seed(0)))
    loss = torch.nn.functional.cross_entropy(student_logits(teachers[0], state, x), y)
    loss.backward()
    for name, p in wf.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    torch.optim.SGD(wf.parameters(), lr=0.1).step()


def test_the_cross_state_carries_a_layer_into_the_next():
    teachers = _teachers()
    layout = TokenLayout.from_module(teachers[0])
    tokens = _tokens(teachers)
    changed = [t.clone() for t in tokens]
    changed[0] = changed[0] + 0.5  # other teachers' weights in layer 0 only
    for cross_layer in (True, False):
        torch.manual_seed(1)
        wf = WeightFormer(layout, _config(cross_layer=cross_layer)).eval()
        with torch.no_grad():
            a, b = wf(tokens), wf(changed)
        assert not torch.allclose(a[0], b[0])
        if cross_layer:  # layer 1 sees layer 0 only through the [cross] state
            assert not torch.allclose(a[1], b[1])
        else:  # without the flow, later layers cannot see layer 0 at all
            assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


def test_shift_consistency_is_exactly_zero_for_identical_teachers_without_cutoff():
    one = _teachers(1)[0]
    layout = TokenLayout.from_module(one)
    tokens = _tokens([one, one, one])
    wf = WeightFormer(layout, _config(cutoff=0.0)).train()
    _, loss = shift_consistency(wf, tokens)
    assert float(loss.detach()) == 0.0
    # different teachers (or the cutoff) make it positive
    _, loss = shift_consistency(wf, _tokens(_teachers()))
    assert float(loss.detach()) > 0.0
    wf_cut = WeightFormer(layout, _config(cutoff=0.5)).train()
    _, loss = shift_consistency(wf_cut, tokens, torch.Generator().manual_seed(0))
    assert float(loss.detach()) > 0.0


def test_the_mlp_baseline_starts_at_the_teachers_mean():
    teachers = _teachers()
    layout = TokenLayout.from_module(teachers[0])
    tokens = _tokens(teachers)
    out = LayerMLP(layout, 3)(tokens)
    for o, t in zip(out, tokens, strict=True):
        torch.testing.assert_close(o, t.mean(dim=1), rtol=1e-6, atol=1e-6)
    state = student_state(layout, out)
    mean = {k: torch.stack([m.state_dict()[k] for m in teachers]).mean(0) for k in state}
    for k in state:
        torch.testing.assert_close(state[k][0], mean[k], rtol=1e-6, atol=1e-6)


def test_the_mlp_baseline_with_init_first_starts_at_teacher_zero():
    teachers = _teachers()
    layout = TokenLayout.from_module(teachers[0])
    tokens = _tokens(teachers)
    for o, t in zip(LayerMLP(layout, 3, init="first")(tokens), tokens, strict=True):
        torch.testing.assert_close(o, t[:, 0], rtol=0, atol=0)
    with pytest.raises(InvalidParameterError, match="init must be 'mean' or 'first'"):
        LayerMLP(layout, 3, init="median")


def test_the_residual_read_out_starts_at_teacher_zero_and_then_learns():
    teachers = _teachers()
    layout = TokenLayout.from_module(teachers[0])
    tokens = _tokens(teachers)
    torch.manual_seed(0)
    wf = WeightFormer(layout, _config(residual=True, cutoff=0.25)).train()
    gen = torch.Generator().manual_seed(0)
    for o, t in zip(wf(tokens, gen), tokens, strict=True):
        torch.testing.assert_close(o, t[:, 0], rtol=0, atol=0)
    x, y = torch.randn(8, 1, 16), torch.randint(0, 5, (8,))
    opt = torch.optim.SGD(wf.parameters(), lr=0.1)
    for step in range(2):  # the gates start at 0: from the second step on all move
        opt.zero_grad()
        state = student_state(layout, wf(tokens, gen))
        torch.nn.functional.cross_entropy(student_logits(teachers[0], state, x), y).backward()
        if step == 1:
            for name, p in wf.named_parameters():
                assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
        opt.step()
    assert float(wf.gate.detach().abs().min()) > 0


@pytest.mark.parametrize("residual", [False, True])
def test_the_generator_is_scale_equivariant(residual):
    """Tokens are read in units of their set's std: scaling every teacher by c scales the
    student by c (exactly, up to float rounding)."""
    teachers = _teachers()
    layout = TokenLayout.from_module(teachers[0])
    tokens = _tokens(teachers)
    torch.manual_seed(0)
    wf = WeightFormer(layout, _config(residual=residual)).eval()
    if residual:
        with torch.no_grad():
            wf.gate.fill_(0.7)
    with torch.no_grad():
        base, scaled = wf(tokens), wf([3.0 * t for t in tokens])
    for a, b in zip(base, scaled, strict=True):
        torch.testing.assert_close(b, 3.0 * a, rtol=1e-5, atol=1e-6)


def test_bad_input():
    teachers = _teachers(4)
    layout = TokenLayout.from_module(teachers[0])
    wf = WeightFormer(layout, _config(max_teachers=3))
    with pytest.raises(InvalidParameterError, match="supports 1 to 3 teachers"):
        wf(_tokens(teachers))
    with pytest.raises(ShapeError, match="tokens for 3 layers"):
        wf(_tokens(teachers[:3])[:2])
    with pytest.raises(InvalidParameterError, match="divisible by n_heads"):
        _config(d_model=10, n_heads=4)
    with pytest.raises(InvalidParameterError, match="cutoff must lie in"):
        _config(cutoff=1.0)
    with pytest.raises(InvalidParameterError, match="exactly 3 teachers"):
        LayerMLP(layout, 3)(_tokens(teachers[:2]))


# ----------------------------------------------------------------------------- training
def _pool_and_data(n_pool: int = 6):
    from weightspace.data.embedded import load_mnist1d
    from weightspace.weights.stacking import stack_state_dicts
    from weightspace.zoo.reference import train_one

    data = load_mnist1d(seed=0, n_samples=600)
    teachers = []
    for seed in range(n_pool):
        m = build_model("vgg", {"stages": [[4], [6]]}, (1, 40), 10)
        teachers.append(train_one(m, data.train, seed, 0.01, 0.0, 4, 32).eval())
    layout = TokenLayout.from_module(teachers[0])
    return (
        teachers,
        layout,
        stack_state_dicts([t.state_dict() for t in teachers], layout.spec),
        data,
    )


def test_fit_weightformer_improves_on_its_start_and_is_deterministic():
    from weightspace.generators.weightformer_training import FitConfig, fit_weightformer

    teachers, layout, pool, data = _pool_and_data()
    torch.manual_seed(0)
    wf = WeightFormer(layout, _config(cutoff=0.1))
    cfg = FitConfig(steps=60, lr=3e-3, batch_size=64, eval_every=20, patience=3, n_val_sets=2)
    res = fit_weightformer(wf, teachers[0], pool, data.train, data.val, cfg)
    again = fit_weightformer(wf, teachers[0], pool, data.train, data.val, cfg)
    assert res.best_val_accuracy > res.history["val_accuracy"][0]
    assert res.best_val_accuracy == again.best_val_accuracy
    assert len(res.history["loss"]) == len(again.history["loss"]) <= 60
    assert all(c >= 0 for c in res.history["consistency"])
    assert not res.model.training


def test_pretraining_moves_the_generator_towards_the_targets():
    from weightspace.generators.weightformer_training import pretrain_weightformer

    teachers, layout, pool, _ = _pool_and_data(4)
    torch.manual_seed(0)
    wf = WeightFormer(layout, _config(cutoff=0.0))
    sets = torch.tensor([[0, 1, 2], [1, 2, 3]])
    targets = [teachers[0].state_dict(), teachers[3].state_dict()]
    tokens = [t[None] for t in tokenize(layout, [teachers[0].state_dict()])]

    def err() -> float:
        wf.eval()
        with torch.no_grad():
            chosen = {k: v[sets[0]] for k, v in pool.items()}
            out = wf([t[None] for t in tokenize(layout, chosen)])
        return sum(float((o[0] - t[0]).pow(2).mean()) for o, t in zip(out, tokens, strict=True))

    before = err()
    pretrain_weightformer(wf, pool, sets, targets, steps=80, lr=3e-3)
    assert err() < 0.5 * before


def test_the_optional_kd_data_term_is_the_projects_kd_loss_on_the_sets_teachers():
    from weightspace.ensembles import kd_loss
    from weightspace.generators import weightformer_training as wt
    from weightspace.weights.stacking import stack_state_dicts

    teachers = _teachers(4)
    layout = TokenLayout.from_module(teachers[0])
    pool = stack_state_dicts([m.state_dict() for m in teachers], layout.spec)
    idx = torch.tensor([3, 1, 0])
    x, y = torch.randn(8, 1, 16), torch.randint(0, 5, (8,))
    soft = wt._teacher_probs(teachers[0], pool, idx, x, 2.0)
    with torch.no_grad():
        expect = torch.stack([(teachers[int(i)](x) / 2.0).softmax(-1) for i in idx]).mean(0)
    torch.testing.assert_close(soft, expect)
    wf = WeightFormer(layout, _config(cutoff=0.0)).eval()
    tokens = wt._set_tokens(wf, pool, idx)
    cfg = wt.FitConfig(alpha=0.0, kd_alpha=0.6, kd_temperature=2.0)
    loss, _ = wt._step_loss(wf, teachers[0], tokens, (x, y), cfg, torch.Generator(), soft)
    logits = student_logits(teachers[0], student_state(layout, wf(tokens)), x)
    torch.testing.assert_close(loss, kd_loss(logits, soft, y, 2.0, 0.6))
    with pytest.raises(InvalidParameterError, match="kd_alpha must lie in"):
        wt.FitConfig(kd_alpha=1.5)
