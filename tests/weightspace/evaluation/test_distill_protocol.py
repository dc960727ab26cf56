"""The distillation protocol: teacher checks, scores against the metric kernels, the
merge/agreement bookkeeping on BatchEnsembles whose answer is known, and the report."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from weightspace.data.embedded import load_digits
from weightspace.ensembles import BatchEnsemble, KDConfig
from weightspace.errors import ArchitectureMismatchError, InvalidParameterError
from weightspace.evaluation import distill_protocol as dp
from weightspace.metrics import accuracy, ensemble_probs, nll
from weightspace.nets import build_model
from weightspace.reporting import distill_report as dr
from weightspace.zoo.init import reinitialized

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(seed: int, hidden=(16,), n_classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", {"hidden": list(hidden)}, input_shape=(1, 8, 8), n_classes=n_classes)


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def teachers():
    return [_mlp(s).eval() for s in range(3)]


def _protocol(**kw) -> dp.DistillProtocol:
    kd = KDConfig(epochs=1, lr=0.01, batch_size=128, optimizer="adam", temperature=4.0, alpha=1.0)
    return dp.DistillProtocol(**{"seeds": (0, 1), "kd": kd, "timing_repeats": 1, **kw})


def test_check_teachers_rejects_bad_ensembles():
    with pytest.raises(InvalidParameterError, match="M >= 2 teachers, got 1"):
        dp.check_teachers([_mlp(0)])
    with pytest.raises(ArchitectureMismatchError, match=r"teacher 1 .* architecture or output"):
        dp.check_teachers([_mlp(0), _mlp(1, hidden=(8,))])
    with pytest.raises(ArchitectureMismatchError, match="teacher 2"):
        dp.check_teachers([_mlp(0), _mlp(1), _mlp(2, n_classes=5)])
    vgg = build_model("vgg", {"stages": [[4]]}, input_shape=(1, 8, 8), n_classes=10)
    with pytest.raises(ArchitectureMismatchError, match=r"\(VGG\)"):
        dp.check_teachers([_mlp(0), vgg])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"seeds": ()}, "seeds must be >= 1 distinct"),
        ({"seeds": (0, 0)}, "seeds must be >= 1 distinct"),
        ({"perturbations": ("fgsm",)}, "perturbations must be distinct names"),
        ({"merge": "sum"}, "merge must be one of"),
        ({"step": -1.0}, "step must be a finite number > 0"),
    ],
)
def test_protocol_validation(kw, match):
    with pytest.raises(InvalidParameterError, match=match):
        _protocol(**kw)


def _be_run(teachers, seed: int, method: str = "be", random_fast: bool = False) -> dp.Trained:
    be = BatchEnsemble(reinitialized(teachers[0], 50 + seed), len(teachers))
    if random_fast:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in be.fast_parameters():
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return dp.Trained(method, seed, be.eval(), 1.0, 0)


def test_scores_agree_with_the_metric_kernels(digits, teachers):
    runs = [dp.Trained("kd", s, reinitialized(teachers[0], 70 + s).eval(), 0.5, 0) for s in (0, 1)]
    runs += [_be_run(teachers, s) for s in (0, 1)]
    runs += [_be_run(teachers, s, "be_tdiv_sdiv", random_fast=True) for s in (0, 1)]
    scores = dp.evaluate_distillation(teachers, digits, runs, _protocol())
    x, y = digits.test.x, digits.test.y
    with torch.no_grad():
        logits = torch.stack([t(x) for t in teachers])
    assert scores.teachers["de"].acc == pytest.approx(float(accuracy(ensemble_probs(logits), y)))
    member_nll = [float(nll(lg, y)) for lg in logits]
    assert scores.teachers["single"].nll == pytest.approx(sum(member_nll) / 3)
    # a BE whose fast weights are all one is each member's plain network: the merged
    # network is the same function, so it agrees everywhere and scores the same
    assert scores.agreement["latentbe"] == [1.0, 1.0]
    for be_row, lat_row in zip(scores.students["be"], scores.students["latentbe"], strict=True):
        assert lat_row.acc == pytest.approx(be_row.acc)
        assert lat_row.nll == pytest.approx(be_row.nll, abs=1e-5)
    # random fast weights: the merge is an approximation of the BE ensemble
    assert min(scores.agreement["latentbe_tdiv_sdiv"]) < 1.0
    assert set(scores.merge_forms) == {"product_of_means", "mean_of_products"}
    assert (
        scores.cost["de"]["forward_passes"] == 3 and scores.cost["latentbe"]["forward_passes"] == 1
    )
    assert scores.cost["latentbe"]["n_params"] == scores.cost["single"]["n_params"]
    assert set(scores.reliability) == {"de", "kd", "latentbe"} or set(scores.reliability) == {
        "de", "kd", "latentbe_tdiv_sdiv"
    }  # fmt: skip
    assert scores.diversity["be_disagreement"] == 0.0  # identical members
    assert scores.diversity["de_disagreement"] > 0.0


def test_report_means_stds_and_required_keys(digits, teachers):
    runs = [_be_run(teachers, s, random_fast=True) for s in (0, 1)]
    runs += [
        dp.Trained("kd", s, reinitialized(teachers[0], 70 + s).eval(), 2.0 + s, 0) for s in (0, 1)
    ]
    scores = dp.evaluate_distillation(teachers, digits, runs, _protocol())
    metrics, tables, fig = dr.assemble_report(scores, {"distill_kd": 1.0})
    accs = [r.acc for r in scores.students["kd"]]
    mean = sum(accs) / 2
    assert metrics["kd_acc"] == pytest.approx(mean)
    assert metrics["kd_acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
    assert metrics["kd_train_seconds"] == pytest.approx(2.5)
    assert metrics["be_train_vs_m_kd"] == pytest.approx(1.0 / (3 * 2.5))
    assert metrics["latentbe_be_agreement"] == pytest.approx(sum(scores.agreement["latentbe"]) / 2)
    for key in (
        "de_acc",
        "de_cece",
        "single_cnll",
        "latentbe_ece",
        "be_brier",
        "latentbe_be_inference_ratio",
    ):
        assert key in metrics
    assert "| KD + LatentBE |" in tables and "| distill_kd | 1.0 |" in tables
    assert len(fig.axes) == len(scores.reliability)


def test_training_entry_points_run(digits, teachers):
    protocol = _protocol(seeds=(0,))
    kd = dp.train_kd(teachers, digits, protocol, 0)
    be = dp.train_be(teachers, digits, protocol, 0, "confods")
    assert kd.method == "kd" and be.method == "be_confods"
    assert isinstance(be.model, BatchEnsemble) and be.model.m == 3
    # students start from seed offset + s, never from a teacher's initialisation
    again = dp.train_kd(teachers, digits, dataclasses.replace(protocol, student_seed_offset=7), 0)
    assert not torch.equal(again.model.state_dict()["1.weight"], kd.model.state_dict()["1.weight"])
