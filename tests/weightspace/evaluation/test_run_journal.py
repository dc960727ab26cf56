"""The run journal: atomic records, fingerprints that change with settings and data."""

from __future__ import annotations

import torch

from weightspace.evaluation.run_journal import RunJournal, fingerprint


def test_fingerprint_depends_on_settings_and_data_not_on_key_order():
    x = torch.arange(6.0).reshape(2, 3)
    a = fingerprint({"lr": 0.1, "epochs": 2}, x)
    assert a == fingerprint({"epochs": 2, "lr": 0.1}, x.clone())
    assert a != fingerprint({"lr": 0.2, "epochs": 2}, x)
    y = x.clone()
    y[1, 2] += 1e-6
    assert a != fingerprint({"lr": 0.1, "epochs": 2}, y)
    assert a != fingerprint({"lr": 0.1, "epochs": 2}, x.reshape(3, 2))  # shape counts
    assert a != fingerprint({"lr": 0.1, "epochs": 2}, x.double())  # dtype counts


def test_put_get_round_trip_and_isolation(tmp_path):
    j = RunJournal(tmp_path, "abc")
    assert j.get("seed=0 method/x") is None and len(j) == 0
    j.put("seed=0 method/x", {"acc": 0.5, "rows": [1, 2]})
    assert j.get("seed=0 method/x") == {"acc": 0.5, "rows": [1, 2]}
    assert len(j) == 1 and not list(tmp_path.rglob("*.tmp"))
    assert RunJournal(tmp_path, "other").get("seed=0 method/x") is None  # other fingerprint
    assert j.get("seed=1 method/x") is None


def test_unreadable_or_foreign_records_are_ignored(tmp_path, caplog):
    j = RunJournal(tmp_path, "f")
    j.put("a", {"v": 1})
    j.put("b", {"v": 2})
    (path_a,) = [p for p in (tmp_path / "f").iterdir() if p.name.startswith("a-")]
    path_a.write_text('{"key": "a", "val')  # a write cut short (not through put)
    assert j.get("a") is None
    assert "unreadable" in caplog.text
    (path_b,) = [p for p in (tmp_path / "f").iterdir() if p.name.startswith("b-")]
    path_b.write_text('{"key": "not b", "value": {"v": 3}}')
    assert j.get("b") is None


def test_no_directory_keeps_nothing():
    j = RunJournal(None, "f")
    j.put("a", {"v": 1})
    assert j.get("a") is None and len(j) == 0
