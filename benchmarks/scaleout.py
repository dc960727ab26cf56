"""Scale-out: zoo throughput and D2NWG diffusion training time on N processes vs 1.

Runs ``benchmarks/scaleout_worker.py`` under ``torchrun --standalone --nproc_per_node=N``
for every N of ``--nprocs`` (one process per GPU with NCCL; gloo on CPUs), all in one
invocation, and reports each N's figure as a ratio to N = 1 measured in the same run:

* zoo: models per second, speed-up ``S_N = rate_N / rate_1`` and efficiency ``S_N / N``
  (target: ``S_N >= 0.9 N``);
* diffusion: seconds per step of the data-parallel loop at a fixed global batch, and the
  speed-up of a fixed number of steps.

Prints a table and writes ``benchmarks/results/scaleout_<tag>.json``.

    python benchmarks/scaleout.py --nprocs 1 2 --device cpu --members 256 --epochs 2 --tag cpu
    python benchmarks/scaleout.py --nprocs 1 2 4 8 --device cuda --tag h200x8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline_targets import code_version

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _torchrun(n: int, what: str, extra: list[str], out: Path) -> dict:
    """The worker under torchrun with ``n`` processes (``n == 0``: a plain process, no
    torchrun: the single-process code path, the baseline of the distributed overhead)."""
    launch = ([] if n == 0 else ["-m", "torch.distributed.run", "--standalone",
                                  f"--nproc_per_node={n}"])  # fmt: skip
    cmd = [sys.executable, *launch, str(HERE / "scaleout_worker.py"), what, "--out", str(out),
           *extra]  # fmt: skip
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--what", nargs="+", default=["zoo", "diffusion"])
    p.add_argument("--device", default="auto")
    p.add_argument("--members", type=int, default=16384)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument(
        "--plain",
        action="store_true",
        help="also time one plain process (no torchrun): the overhead of N=1",
    )
    p.add_argument("--tag", default="local")
    args = p.parse_args()
    if 1 not in args.nprocs:
        args.nprocs = [1, *args.nprocs]
    tmp = Path(tempfile.mkdtemp(prefix="scaleout-"))
    common = ["--device", args.device, "--tmp", str(tmp)]
    extra = {
        "zoo": [*common, "--members", str(args.members), "--epochs", str(args.epochs)],
        "diffusion": [*common, "--steps", str(args.steps), "--batch-size", str(args.batch_size)],
    }
    rows: dict[str, list[dict]] = {}
    try:
        for what in args.what:
            rows[what] = []
            for n in [*args.nprocs, *([0] if args.plain else [])]:
                rec = _torchrun(n, what, extra[what], tmp / f"{what}-{n}.json")
                rec["launch"] = "plain" if n == 0 else "torchrun"
                rows[what].append(rec)
                print(f"{what} N={n or 'plain'}: {rec['seconds']:.2f} s on {rec['device']}",
                      flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for recs in rows.values():
        base = recs[0]["seconds"]
        for r in recs:
            r["speedup"] = base / r["seconds"]
            r["efficiency"] = r["speedup"] / r["ranks"]
            r["meets_0.9N"] = r["speedup"] >= 0.9 * r["ranks"]
    print("\n| measurement | N | device | seconds | speed-up vs N=1 | efficiency |")
    print("|---|---|---|---|---|---|")
    for what, recs in rows.items():
        for r in recs:
            unit = (f"{r['models_per_second']:.0f} models/s" if what == "zoo"
                    else f"{1000 * r['seconds_per_step']:.1f} ms/step")  # fmt: skip
            n = r["ranks"] if r["launch"] == "torchrun" else "1 (plain)"
            print(f"| {what} ({unit}) | {n} | {r['device']} | {r['seconds']:.2f} | "
                  f"{r['speedup']:.2f}x | {r['efficiency']:.2f} |")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"scaleout_{args.tag}.json"
    out.write_text(json.dumps({"code_version": code_version(), "args": vars(args),
                               "results": rows}, indent=2))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
