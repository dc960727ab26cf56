"""SuperWeights protocol on tiny MNIST-1D: schema, budgets, anytime, members, determinism."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest
import torch

from weightspace.data.embedded import load_mnist1d
from weightspace.ensembles.batchensemble import BatchEnsemble
from weightspace.ensembles.superweights import SuperWeightTrainConfig
from weightspace.errors import InvalidParameterError
from weightspace.evaluation.superweights_members import (
    Runner,
    RunSpec,
    build_member,
    count_parameters,
)
from weightspace.evaluation.superweights_protocol import (
    KINDS,
    SuperWeightsProtocol,
    member_configs,
    run_superweights,
)
from weightspace.metrics import accuracy

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {"stem_channels": 4, "stages": [[4, 1], [8, 2]], "norm": "batch"}
ROW_KEYS = {
    "method",
    "kind",
    "budget",
    "variant",
    "seed",
    "acc",
    "nll",
    "ece",
    "params",
    "diversity",
    "member_acc_mean",
    "flops",
    "train_seconds",
}
TRAIN = SuperWeightTrainConfig(epochs=1, batch_size=64, lr=3e-3, tau=0.1, beta=0.5)


def _protocol(**overrides) -> SuperWeightsProtocol:
    args = {
        "base": BASE,
        "n_members": 3,
        "budgets": {"q50": 0.5, "q80": 0.8},
        "seeds": (0,),
        "train": TRAIN,
        "sensitivity_budget": "q50",
        "tau_grid": (0.1, 0.5),
        "beta_grid": (0.9,),
        "npas_budgets": ("q50",),
        "anytime_budget": "q50",
        "interpolation_points": 3,
    }
    return SuperWeightsProtocol(**{**args, **overrides})


@pytest.fixture(scope="module")
def data():
    return load_mnist1d(seed=0, n_samples=300)


@pytest.fixture(scope="module")
def result(data, one_thread):
    return run_superweights(data, _protocol())


def _rows(result, **match) -> list[dict]:
    return [r for r in result["rows"] if all(r[k] == v for k, v in match.items())]


def _one(result, **match) -> dict:
    rows = _rows(result, **match)
    assert len(rows) == 1, (match, rows)
    return rows[0]


# ------------------------------------------------------------------------------- schema
def test_schema_and_json(result):
    assert {"rows", "de_params", "anytime", "anytime_seconds", "interpolation", "clusters"} <= set(
        result
    )
    json.loads(json.dumps(result, allow_nan=False))
    variants = {None, "learned", "one_sw", "not_shared", "shared", "npas", "narrow"}
    for row in result["rows"]:
        assert set(row) == ROW_KEYS
        assert row["method"] in ("single", "de", "be", "swn")
        v = row["variant"]
        assert v in variants or v.startswith(("tau=", "beta=")), v
        assert isinstance(row["seed"], int) and isinstance(row["params"], int)
        for key in ("acc", "nll", "ece", "flops", "train_seconds"):
            assert isinstance(row[key], float) and math.isfinite(row[key])
        assert 0.0 <= row["acc"] <= 1.0 and row["nll"] > 0 and row["flops"] > 0
        ensemble = row["method"] in ("de", "be") or (row["method"] == "swn" and v != "npas")
        for key in ("diversity", "member_acc_mean"):
            assert isinstance(row[key], float) if ensemble else row[key] is None
    # every run the protocol asks for, once
    _one(result, method="single", variant=None)
    _one(result, method="be")
    for kind in KINDS:
        _one(result, method="de", kind=kind)
        for budget in ("q50", "q80"):
            _one(result, method="swn", kind=kind, budget=budget, variant="learned")
    for budget in ("q50", "q80"):
        _one(result, method="swn", kind="ho", budget=budget, variant="one_sw")
    _one(result, method="swn", kind=None, budget="q50", variant="npas")
    _one(result, method="single", budget="q50", variant="narrow")
    for v in ("tau=0.1", "tau=0.5", "beta=0.9", "not_shared", "shared"):
        _one(result, method="swn", kind="he_width", budget="q50", variant=v)
    # the grid value equal to the training setting is the learned run itself
    learned = _one(result, kind="he_width", budget="q50", variant="learned")
    assert {**_one(result, variant="tau=0.1"), "variant": "learned"} == learned


def test_anytime_interpolation_clusters_shapes(result):
    n = 3
    labels = {f"de_{k}" for k in KINDS} | {f"swn_{k}_q50" for k in KINDS} | {"be"}
    assert set(result["anytime"]) == labels == set(result["anytime_seconds"])
    for label, entries in result["anytime"].items():
        subsets = [tuple(e["members"]) for e in entries]
        if label == "be":  # only N speeds: the prefixes
            assert subsets == [(0,), (0, 1), (0, 1, 2)]
        else:
            every = [s for r in range(1, n + 1) for s in itertools.combinations(range(n), r)]
            assert sorted(subsets) == sorted(every)
        flops = [e["flops"] for e in entries]
        assert flops == sorted(flops)
        assert len(result["anytime_seconds"][label]) == len(entries)
        assert all(s > 0 for s in result["anytime_seconds"][label])
    assert set(result["interpolation"]) == {"de_ho", "swn_ho_q50", "swn_ho_q80"}
    for points in result["interpolation"].values():
        assert [t for t, _ in points] == [0.0, 0.5, 1.0]
        assert all(0.0 <= acc <= 1.0 for _, acc in points)
    assert set(result["clusters"]) == {"swn_he_width_q50", "swn_he_depth_width_q50"}
    for entry in result["clusters"].values():
        keys = {f"{m}/{path}" for m, paths in enumerate(entry["members"]) for path in paths}
        assert keys == set(entry["cluster"])
    deep, shallow = result["clusters"]["swn_he_depth_width_q50"]["members"][:2]
    assert len(shallow) < len(deep)


# ------------------------------------------------------------------------------ budgets
def test_parameter_counts_respect_budgets(result, data):
    p = _protocol()
    shape, n_classes = data.input_shape, data.n_classes
    base_params = count_parameters(build_member(BASE, shape, n_classes, 0))
    for kind in KINDS:
        members = [build_member(c, shape, n_classes, 0) for c in member_configs(p, kind)]
        assert result["de_params"][kind] == sum(count_parameters(m) for m in members)
        assert _one(result, method="de", kind=kind)["params"] == result["de_params"][kind]
    for row in _rows(result, method="swn"):
        ref = base_params if row["variant"] == "npas" else result["de_params"][row["kind"]]
        assert 0 < row["params"] <= p.budgets[row["budget"]] * ref, row
    assert _one(result, variant="narrow")["params"] <= 0.5 * base_params
    assert _one(result, method="single", variant=None)["params"] == base_params
    be = BatchEnsemble(build_member(BASE, shape, n_classes, 0), 3)
    assert _one(result, method="be")["params"] == count_parameters(be)
    assert _one(result, method="be")["flops"] == _one(result, method="de", kind="ho")["flops"]


# ------------------------------------------------------------------------------ anytime
def test_full_anytime_set_equals_the_row(result):
    pairs = [("be", _one(result, method="be"))]
    for kind in KINDS:
        pairs.append((f"de_{kind}", _one(result, method="de", kind=kind)))
        pairs.append((f"swn_{kind}_q50", _one(result, kind=kind, budget="q50", variant="learned")))
    for label, row in pairs:
        full = max(result["anytime"][label], key=lambda e: len(e["members"]))
        assert (full["acc"], full["nll"], full["ece"], full["flops"]) == (
            row["acc"],
            row["nll"],
            row["ece"],
            row["flops"],
        ), label


@pytest.mark.parametrize(
    ("spec", "label"),
    [
        (RunSpec(0, "de", "ho"), "de_ho"),
        (RunSpec(0, "swn", "he_width", "q50", "learned", tau=0.1, beta=0.5), "swn_he_width_q50"),
    ],
)
def test_singleton_subset_is_the_member(result, data, spec, label):
    run = Runner(data, _protocol()).run(spec)  # the same seeds: the same members again
    singles = {e["members"][0]: e for e in result["anytime"][label] if len(e["members"]) == 1}
    for i, net in enumerate(run.nets):
        with torch.no_grad():
            acc = float(accuracy(net.eval()(data.test.x), data.test.y))
        assert singles[i]["acc"] == pytest.approx(acc, abs=1e-6)


# ------------------------------------------------------------------------------ members
def test_member_configs_widths_and_depths():
    p = SuperWeightsProtocol()
    ho = member_configs(p, "ho")
    assert ho == [p.base] * 4
    width = member_configs(p, "he_width")  # width factors 1, 6/7, 5/7, 4/7, rounded
    assert [[c for c, _ in m["stages"]] for m in width] == [
        [8, 16, 32],
        [7, 14, 27],
        [6, 11, 23],
        [5, 9, 18],
    ]
    assert [m["stem_channels"] for m in width] == [8, 7, 6, 5]
    assert all([n for _, n in m["stages"]] == [2, 2, 2] for m in width)
    dw = member_configs(p, "he_depth_width")  # (deep, 1), (shallow, 4/7), (deep, 4/7), (shallow, 1)
    assert [m["stages"] for m in dw] == [
        [[8, 2], [16, 2], [32, 2]],
        [[5, 1], [9, 1], [18, 1]],
        [[5, 2], [9, 2], [18, 2]],
        [[8, 1], [16, 1], [32, 1]],
    ]
    for kind in ("he_width", "he_depth_width"):
        configs = member_configs(p, kind)
        assert len({json.dumps(c, sort_keys=True) for c in configs}) == 4
    assert len(member_configs(dataclasses.replace(p, n_members=6), "he_depth_width")) == 6


# -------------------------------------------------------------------------- determinism
def test_same_protocol_same_results(data, result):
    again = run_superweights(data, _protocol())

    def strip(res):
        rows = [{k: v for k, v in r.items() if k != "train_seconds"} for r in res["rows"]]
        return rows, res["anytime"], res["interpolation"], res["clusters"], res["de_params"]

    assert strip(again) == strip(result)


def test_cells_below_their_smallest_ensemble(data):
    small = _protocol(
        kinds=("ho",),
        sensitivity_kind="ho",
        sensitivity_seeds=(),
        npas_budgets=(),
        budgets={"q30": 0.3},
        anytime_budget="q30",
        sensitivity_budget="q30",
    )
    res = run_superweights(data, small)
    # one SuperWeight per layer needs a bank of one whole network: it cannot fit 0.3
    assert [s["variant"] for s in res["skipped"]] == ["one_sw"]
    assert res["skipped"][0]["minimum_params"] > 0.3 * res["de_params"]["ho"]
    assert not _rows(res, variant="one_sw")
    # the learned cell starts from fewer depth bins to fit, and does
    assert 1 <= res["initial_bins"]["swn_ho_q30"] < 4
    assert _one(res, variant="learned")["params"] <= 0.3 * res["de_params"]["ho"]
    with pytest.raises(InvalidParameterError, match="at least"):
        run_superweights(data, dataclasses.replace(small, budgets={"q30": 0.05}))


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"kinds": ("ho", "mimo")}, "kinds"),
        ({"kinds": ()}, "kinds"),
        ({"budgets": {"q50": 0.5, "q80": 0.0}}, "budgets"),
        ({"budgets": {"q50": 0.5, "q80": 1.5}}, "budgets"),
        ({"seeds": ()}, "seeds"),
        ({"seeds": (0, 0)}, "seeds"),
        ({"sensitivity_seeds": (3,)}, "sensitivity_seeds"),
        ({"tau_grid": (0.1, 1.5)}, "tau"),
        ({"beta_grid": (-2.0,)}, "beta"),
        ({"n_members": 1}, "n_members"),
        ({"interpolation_points": 1}, "interpolation_points"),
        ({"sensitivity_kind": "he_width", "kinds": ("ho",)}, "sensitivity_kind"),
        ({"anytime_budget": "q25"}, "anytime_budget"),
        ({"npas_budgets": ("q10",)}, "npas_budgets"),
        ({"train": dataclasses.replace(TRAIN, tau=None)}, "tau"),
        ({"train": dataclasses.replace(TRAIN, optimizer="adamw")}, "optimizer"),
        ({"base": {"stages": [[4, 1]]}}, "base"),
        ({"base": {"stem_channels": 4, "stages": [[4, 0]]}}, "base"),
    ],
)
def test_bad_protocols(overrides, match):
    with pytest.raises(InvalidParameterError, match=match):
        _protocol(**overrides)


def test_bad_arguments(data):
    with pytest.raises(InvalidParameterError, match="SplitDataset"):
        run_superweights(data.train, _protocol())
    with pytest.raises(InvalidParameterError, match="SuperWeightsProtocol"):
        run_superweights(data, {"seeds": [0]})


def test_a_killed_run_resumes_from_its_journal(data, tmp_path, monkeypatch):
    from weightspace.evaluation import superweights_members as sm

    p = _protocol(kinds=("ho",), sensitivity_kind="ho", tau_grid=(0.1,), beta_grid=(0.5,))
    calls: list = []
    real = sm.Runner.run

    def counted(self, spec):
        calls.append(spec)
        return real(self, spec)

    monkeypatch.setattr(sm.Runner, "run", counted)
    first = run_superweights(data, p, journal_dir=tmp_path)
    n_trained = len(calls)
    (folder,) = list(tmp_path.iterdir())
    records = sorted(folder.glob("*.json"))
    assert len(records) == n_trained > 3
    # a kill before the last two runs finished: their records never appeared
    for path in records[:2]:
        path.unlink()
    calls.clear()
    again = run_superweights(data, p, journal_dir=tmp_path)
    assert len(calls) == 2
    strip = lambda res: [  # noqa: E731
        {k: v for k, v in r.items() if k != "train_seconds"} for r in res["rows"]
    ]
    assert strip(again) == strip(first)
    assert again["anytime"] == first["anytime"]
    assert again["interpolation"] == first["interpolation"]
    # other settings never reuse the journal
    calls.clear()
    other = dataclasses.replace(p, train=dataclasses.replace(TRAIN, lr=1e-3))
    run_superweights(data, other, journal_dir=tmp_path)
    assert len(calls) == n_trained and len(list(tmp_path.iterdir())) == 2
