"""Zoo index look-ups: the O(1) id map vs the boolean mask it replaced, in one run.

A profile of ``kedro run --env gpu --pipelines=d2nwg`` on an NVIDIA H200 (cProfile, the
first 290 s) spent 84 of 312 profiled seconds in ``Zoo.row``: every look-up of a model
was a boolean mask over the whole index, three per model in ``Zoo.stack``, so stacking
the 10,000-head zoo was O(N^2). The zoo now keeps a ``model_id -> position`` map.

Two measurements, each old vs new on the same data:

- **look-ups**: the three cells ``stack`` reads per model (arch key, sha256, path) for
  ``--n-lookups`` models of an ``--n-index``-row index (the mask's cost grows with the
  index, so it is timed on a share of the models, the same for both);
- **stack**: ``Zoo.stack`` of a saved zoo of ``--n-saved`` digits MLPs, files read and
  hash-verified (the old look-up patched in for the baseline; the stacks must be equal).

Prints a table and writes ``benchmarks/results/zoo_lookup.json``.

    python benchmarks/zoo_lookup.py                    # 10,000-row index, 2,000 saved
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline_targets import code_version
from weightspace.data import load_dataset
from weightspace.zoo import Zoo, ZooRunOptions, expand_grid, train_zoo
from weightspace.zoo.zoo import INDEX_COLUMNS

RESULTS = Path(__file__).resolve().parent / "results"
CELLS = ("arch_key", "sha256", "path")


class MaskZoo(Zoo):
    """The zoo as it was: each look-up a boolean mask over the whole index."""

    def _value(self, model_id: str, column: str) -> Any:
        hit = self.index[self.index["model_id"] == model_id]
        if hit.empty:
            raise KeyError(f"model {model_id!r} is not in this zoo")
        return hit.iloc[0][column]


def _index(n: int) -> pd.DataFrame:
    order = np.random.default_rng(0).permutation(n)
    data: dict[str, list] = {c: [f"{c}-{i}" for i in order] for c in INDEX_COLUMNS}
    data["model_id"] = [f"m{i:06d}" for i in order]
    return pd.DataFrame(data)


def _lookups(zoo: Zoo, ids: list[str]) -> tuple[float, list]:
    t0 = time.perf_counter()
    got = [[zoo._value(m, c) for c in CELLS] for m in ids]
    return time.perf_counter() - t0, got


def _stack(zoo: Zoo) -> tuple[float, dict[str, torch.Tensor]]:
    t0 = time.perf_counter()
    got = zoo.stack(zoo.model_ids)
    return time.perf_counter() - t0, got


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-index", type=int, default=10_000, help="index rows for the look-ups")
    ap.add_argument("--n-lookups", type=int, default=1_000, help="models looked up")
    ap.add_argument("--n-saved", type=int, default=2_000, help="saved models for the stack")
    ap.add_argument("--out", type=Path, default=RESULTS / "zoo_lookup.json")
    args = ap.parse_args(argv)

    index = _index(args.n_index)
    ids = index["model_id"].tolist()[: args.n_lookups]
    t_mask, want = _lookups(MaskZoo(index), ids)
    t_map, got = _lookups(Zoo(index), ids)
    assert got == want, "the id map and the mask disagree"

    grid = {
        "tasks": [{"dataset": "digits"}],
        "architectures": [{"name": "mlp", "config": {"hidden": [8]}}],
        "seeds": args.n_saved,
        "train": {"epochs": 1},
    }
    members = expand_grid(grid, {"digits": 10})
    trained, _ = train_zoo(members, {"digits": load_dataset("digits")},
                           options=ZooRunOptions(device="cpu", progress=False))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        trained.save(tmp)
        s_mask, a = _stack(MaskZoo.load(tmp))
        s_map, b = _stack(Zoo.load(tmp))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    rows = [
        (f"look-ups, 3 cells x model ({len(ids)} of)", args.n_index, t_mask, t_map),
        ("Zoo.stack of saved models", args.n_saved, s_mask, s_map),
    ]
    print(f"{'measure':38s} {'models':>7s} {'mask (s)':>9s} {'id map (s)':>10s} {'speed-up':>9s}")
    for name, n, old, new in rows:
        print(f"{name:38s} {n:7d} {old:9.3f} {new:10.3f} {old / new:8.1f}x")
    result = {
        "benchmark": "zoo_lookup",
        "code": code_version(),
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "lookups": {"index_rows": args.n_index, "models": len(ids), "mask_s": t_mask,
                    "map_s": t_map, "speedup": t_mask / t_map},
        "stack": {"models": args.n_saved, "mask_s": s_mask, "map_s": s_map,
                  "speedup": s_mask / s_map, "equal": True},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
