"""Input perturbations: step size, ODS/ConfODS by hand, TDiv-SDiv by finite differences."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightspace.ensembles.batchensemble import BatchEnsemble
from weightspace.ensembles.perturb import conf_ods, normalized_step, ods, tdiv_sdiv
from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.nets.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

STEP = 1.0 / 255
SHAPE = (1, 40)  # D = 40
B = 6


def _mlp(seed: int, dtype=torch.float32, shape=SHAPE) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", {"hidden": [16]}, shape, 5).to(dtype)


def _teachers(k: int, dtype=torch.float32) -> list[nn.Module]:
    return [_mlp(10 + i, dtype) for i in range(k)]


def _student(m: int, dtype=torch.float32, seed: int = 0) -> BatchEnsemble:
    be = BatchEnsemble(_mlp(seed, dtype), m)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in be.fast_parameters():
            p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=dtype))
    return be


def _x(dtype=torch.float32, shape=SHAPE, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, *shape, generator=g, dtype=dtype)


def _norms(d: torch.Tensor) -> torch.Tensor:
    return d.reshape(d.shape[0], -1).norm(dim=1)


def _all_modes(*models: nn.Module) -> list[bool]:
    return [mod.training for model in models for mod in model.modules()]


# --------------------------------------------------------------------------- normalized_step
@pytest.mark.parametrize("shape", [(4, 1, 40), (3, 2, 5, 5), (2, 7)])
def test_normalized_step_has_norm_step_sqrt_d_and_keeps_the_direction(shape):
    torch.manual_seed(0)
    grad = torch.randn(shape, dtype=torch.float64) * torch.logspace(-3, 3, shape[0]).reshape(
        -1, *([1] * (len(shape) - 1))
    )
    d = math.prod(shape[1:])
    out = normalized_step(grad, 0.01)
    assert out.shape == grad.shape
    torch.testing.assert_close(_norms(out), torch.full((shape[0],), 0.01 * math.sqrt(d)).double())
    cos = F.cosine_similarity(out.reshape(shape[0], -1), grad.reshape(shape[0], -1), dim=1)
    torch.testing.assert_close(cos, torch.ones(shape[0], dtype=torch.float64))


def test_normalized_step_float32_norm_within_1e_5():
    grad = torch.randn(8, 1, 40)
    out = normalized_step(grad, STEP)
    assert (_norms(out) - STEP * math.sqrt(40)).abs().max() <= 1e-5 * STEP * math.sqrt(40)


def test_a_zero_gradient_gives_a_zero_step_without_nan():
    grad = torch.randn(3, 1, 40)
    grad[1] = 0.0
    out = normalized_step(grad, STEP)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros(1, 40))
    assert _norms(out)[0] > 0


@pytest.mark.parametrize("step", [0, -1.0, float("nan"), float("inf"), True, "0.1"])
def test_step_must_be_a_finite_positive_number(step):
    with pytest.raises(InvalidParameterError, match=r"step must be a finite number > 0"):
        normalized_step(torch.ones(2, 3), step)
    with pytest.raises(InvalidParameterError, match=r"step must be a finite number > 0"):
        ods(_teachers(1), _x(), step)


# --------------------------------------------------------------------------- ODS / ConfODS
@pytest.mark.parametrize("fn", [ods, conf_ods])
def test_ods_shape_norm_and_determinism(fn):
    teachers, x = _teachers(3), _x()
    out = fn(teachers, x, STEP, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    norms = _norms(out - x)
    if fn is ods:
        torch.testing.assert_close(norms, torch.full((B,), STEP * math.sqrt(40)))
    else:  # scaled by the chosen teacher's confidence, in (1/C, 1]
        assert (norms < STEP * math.sqrt(40)).all() and (norms > STEP * math.sqrt(40) / 5).all()
    again = fn(teachers, x, STEP, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    other = fn(teachers, x, STEP, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(out, other)


@pytest.mark.parametrize("fn", [ods, conf_ods])
def test_ods_respects_clip(fn):
    x = _x()
    x[0, 0, :5] = 0.0
    x[1, 0, :5] = 1.0
    out = fn(_teachers(2), x, 0.5, clip=(0.0, 1.0), generator=torch.Generator().manual_seed(0))
    assert out.min() >= 0.0 and out.max() <= 1.0
    unclipped = fn(_teachers(2), x, 0.5, generator=torch.Generator().manual_seed(0))
    assert unclipped.min() < 0.0 or unclipped.max() > 1.0  # the clip did something
    torch.testing.assert_close(out, unclipped.clamp(0.0, 1.0))


def test_ods_uses_the_generator_and_not_the_global_rng():
    teachers, x = _teachers(2), _x()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    ods(teachers, x, STEP, generator=torch.Generator().manual_seed(0))
    conf_ods(teachers, x, STEP, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
    # Without a generator the global RNG is used (and works).
    assert ods(teachers, x, STEP).shape == (B, *SHAPE)
    assert not torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("confident", [False, True])
def test_ods_and_conf_ods_against_a_hand_computation_on_linear_teachers(confident):
    torch.manual_seed(0)
    teachers = [nn.Linear(6, 4).double() for _ in range(2)]
    x = torch.rand(B, 6, dtype=torch.float64)
    step = 0.02
    # The documented draws: teacher index, then w = 2 U - 1 of shape (B, C).
    g = torch.Generator().manual_seed(5)
    k = int(torch.randint(2, (1,), generator=g).item())
    w = 2.0 * torch.rand((B, 4), generator=g, dtype=torch.float64) - 1.0
    A, b = teachers[k].weight.detach(), teachers[k].bias.detach()
    p = torch.softmax(x @ A.T + b, dim=-1)
    # d/dz sum_c w_c softmax(z)_c = p * (w - <p, w>), then the chain rule through A.
    grad = (p * (w - (p * w).sum(1, keepdim=True))) @ A
    eps = grad / grad.norm(dim=1, keepdim=True) * step * math.sqrt(6)
    if confident:  # ConfODS scales each example's step by the teacher's top probability
        eps = eps * p.max(dim=1, keepdim=True).values
    expected = x + eps
    fn = conf_ods if confident else ods
    out = fn(teachers, x, step, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    other = (ods if confident else conf_ods)(
        teachers, x, step, generator=torch.Generator().manual_seed(5)
    )
    assert (other - expected).abs().max() > 1e-6  # the confidence scaling matters


def test_ods_restores_modes_and_leaves_parameter_grads_alone():
    teachers = [build_model("vgg", {"stages": [[4]], "norm": "batch"}, SHAPE, 5)]
    teachers[0].train()
    bn = teachers[0].features[1]
    before = bn.running_mean.clone()
    ods(teachers, _x(), STEP, generator=torch.Generator().manual_seed(0))
    assert all(_all_modes(teachers[0]))
    assert torch.equal(bn.running_mean, before)  # ran in eval mode
    assert all(p.grad is None for p in teachers[0].parameters())


def test_a_constant_teacher_gives_a_zero_step():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = nn.Parameter(torch.randn(5))

        def forward(self, x):
            return self.logits.expand(x.shape[0], -1)

    x = _x()
    assert torch.equal(ods([Constant()], x, STEP), x)


def test_non_finite_inputs_and_outputs_are_reported():
    x = _x()
    x[2, 0, 3] = float("nan")
    with pytest.raises(InvalidParameterError, match="x contains NaN or infinity"):
        ods(_teachers(1), x, STEP)
    broken = _mlp(0)
    with torch.no_grad():
        broken[1].weight[0, 0] = float("nan")
    with pytest.raises(
        InvalidParameterError, match=r"the conf_ods perturbation produced NaN or infinity"
    ):
        conf_ods([broken], _x(), STEP)


def test_ods_argument_checks():
    with pytest.raises(InvalidParameterError, match="teachers is empty"):
        ods([], _x(), STEP)
    with pytest.raises(InvalidParameterError, match="wrap a single teacher in a list"):
        ods(_mlp(0), _x(), STEP)
    with pytest.raises(InvalidParameterError, match=r"teachers\[1\] must be an nn.Module"):
        ods([_mlp(0), "t"], _x(), STEP)
    with pytest.raises(ShapeError, match=r"B >= 1"):
        ods(_teachers(1), torch.zeros(0, *SHAPE), STEP)
    with pytest.raises(InvalidParameterError, match="floating-point"):
        ods(_teachers(1), torch.zeros(B, *SHAPE, dtype=torch.long), STEP)
    with pytest.raises(InvalidParameterError, match=r"clip must be None or a pair"):
        ods(_teachers(1), _x(), STEP, clip=(1.0, 0.0))
    with pytest.raises(ShapeError, match=r"must output logits \(B, C\)"):
        ods([nn.Flatten(0)], _x(), STEP)


# --------------------------------------------------------------------------- TDiv - SDiv
def _surrogate(teachers, student, x0, pair):
    """f(z) = TDiv(z) - SDiv(z) with the targets fixed at x0 (the stop-gradient surrogate)."""
    i, j = pair
    members = [student.member(k).eval() for k in (i, j)]
    for t in teachers:
        t.eval()
    with torch.no_grad():
        p_t = torch.softmax(teachers[i](x0), -1)
        p_s = torch.softmax(members[0](x0), -1)

    def f(z):
        tdiv = -(p_t * F.log_softmax(teachers[j](z), -1)).sum()
        sdiv = -(p_s * F.log_softmax(members[1](z), -1)).sum()
        return tdiv - sdiv

    return f


def test_tdiv_sdiv_ascends_the_surrogate():
    dt = torch.float64
    teachers, student, x0 = _teachers(3, dt), _student(3, dt), _x(dt)
    step = 1e-3
    out = tdiv_sdiv(teachers, student, x0, step, pair=(0, 1))
    f = _surrogate(teachers, student, x0, (0, 1))
    z = x0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(z), z)
    eps = out - x0
    # The step is the surrogate's gradient, normalised per example.
    expected = grad / _norms(grad).reshape(-1, 1, 1) * step * math.sqrt(40)
    torch.testing.assert_close(eps, expected, atol=1e-12, rtol=1e-8)
    torch.testing.assert_close(_norms(eps), torch.full((B,), step * math.sqrt(40), dtype=dt))
    # First order: f(x + h eps) - f(x) = h <grad, eps> for small h (finite differences).
    with torch.no_grad():
        f0 = f(x0)
        slope = (grad * eps).sum()
        assert slope > 0
        for h in (1e-2, 1e-3):
            fd = (f(x0 + h * eps) - f0) / h
            assert abs(fd - slope) <= 1e-3 * abs(slope), (h, fd, slope)
        assert f(out) > f0


def test_tdiv_sdiv_with_the_pair_reversed_moves_elsewhere():
    teachers, student, x = _teachers(2), _student(2), _x()
    a = tdiv_sdiv(teachers, student, x, STEP, pair=(0, 1))
    b = tdiv_sdiv(teachers, student, x, STEP, pair=(1, 0))
    assert (a - b).abs().max() > 1e-4


def test_tdiv_sdiv_draws_a_pair_of_different_members_with_the_generator():
    teachers, student, x = _teachers(3), _student(3), _x()
    by_pair = {
        p: tdiv_sdiv(teachers, student, x, STEP, pair=p)
        for p in [(i, j) for i in range(3) for j in range(3) if i != j]
    }
    seen = set()
    for seed in range(12):
        out = tdiv_sdiv(teachers, student, x, STEP, generator=torch.Generator().manual_seed(seed))
        again = tdiv_sdiv(teachers, student, x, STEP, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(out, again)
        match = [p for p, v in by_pair.items() if torch.equal(v, out)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) >= 3


def test_tdiv_sdiv_keeps_grads_and_modes_and_clips():
    teachers = [build_model("vgg", {"stages": [[4]], "norm": "batch"}, SHAPE, 5) for _ in range(2)]
    student = BatchEnsemble(build_model("vgg", {"stages": [[4]], "norm": "batch"}, SHAPE, 5), 2)
    teachers[0].train()
    teachers[1].eval()
    student.train()
    student.module.features[1].eval()  # a mixed mode must come back as it was
    modes = _all_modes(*teachers, student)
    stats = [copy.deepcopy(m.state_dict()) for m in (*teachers, student)]
    x = _x()
    out = tdiv_sdiv(teachers, student, x, 0.2, clip=(0.0, 1.0), pair=(1, 0))
    assert _all_modes(*teachers, student) == modes
    for model, before in zip((*teachers, student), stats, strict=True):
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        assert all(p.grad is None for p in model.parameters())
    assert out.min() >= 0.0 and out.max() <= 1.0
    # Computed in eval mode: the same result with every model in eval mode.
    for model in (*teachers, student):
        model.eval()
    assert torch.equal(out, tdiv_sdiv(teachers, student, x, 0.2, clip=(0.0, 1.0), pair=(1, 0)))


def test_tdiv_sdiv_argument_checks():
    x = _x()
    with pytest.raises(InvalidParameterError, match=r"3 teachers and the student has m=2"):
        tdiv_sdiv(_teachers(3), _student(2), x, STEP)
    with pytest.raises(InvalidParameterError, match="at least 2 teachers"):
        tdiv_sdiv(_teachers(1), _student(1), x, STEP)
    with pytest.raises(InvalidParameterError, match="student must be a BatchEnsemble"):
        tdiv_sdiv(_teachers(2), _mlp(0), x, STEP)
    for pair in [(0, 0), (0, 2), (0,), (0.0, 1)]:
        with pytest.raises(InvalidParameterError, match=r"two different member indices"):
            tdiv_sdiv(_teachers(2), _student(2), x, STEP, pair=pair)
    bad = x.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(InvalidParameterError, match="x contains NaN or infinity"):
        tdiv_sdiv(_teachers(2), _student(2), bad, STEP)
    student = _student(2)
    with torch.no_grad():
        student.module[1].weight.fill_(float("nan"))
    with pytest.raises(InvalidParameterError, match="tdiv_sdiv perturbation produced NaN"):
        tdiv_sdiv(_teachers(2), student, x, STEP)
