"""Zoo training throughput: batched (vmap) stacks vs a per-model PyTorch loop.

Trains digits MLPs (64-32-10 by default, Adam, 20 epochs, batch 32) two ways in one run:

- **batched**: ``weightspace.zoo.train.train_stack`` on ``--n-batched`` members at once;
- **loop**: ``weightspace.zoo.reference.train_one`` (``nn.Module`` + ``torch.optim.Adam``,
  one model after the other) on ``--n-loop`` members.

Both use the same initial weights and batch orders, so the first ``--n-loop`` members of
the batched run must equal the looped ones (the max weight difference is reported). Prints
a table and writes ``benchmarks/results/zoo_throughput_<device>.json``.

    python benchmarks/zoo_throughput.py                      # CPU defaults
    python benchmarks/zoo_throughput.py --device cuda --n-batched 65536 --n-loop 5
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from pipeline_targets import code_version
from weightspace.data import load_dataset
from weightspace.device import resolve_device
from weightspace.nets import batched_forward, build_model
from weightspace.zoo.reference import train_one
from weightspace.zoo.tasks import TaskStack
from weightspace.zoo.train import StackHParams, train_stack

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _hparams(n: int, lr: float, epochs: int) -> StackHParams:
    return StackHParams(
        seeds=torch.arange(n),
        lr=torch.full((n,), lr),
        weight_decay=torch.zeros(n),
        epochs=torch.full((n,), epochs),
        init_scale=torch.ones(n),
    )


def _batched_accuracy(template, result, x_test, y_test) -> torch.Tensor:

    template.eval()
    correct = torch.zeros((), device=x_test.device)
    states = result.final
    n = next(iter(states.values())).shape[0]
    for start in range(0, n, 4096):
        chunk = {k: v[start : start + 4096].to(x_test.device) for k, v in states.items()}
        with torch.no_grad():
            logits = batched_forward(template, chunk, x_test, shared_input=True)
        correct += (logits.argmax(-1) == y_test).float().mean(1).sum()
    return correct / n


def run(args: argparse.Namespace) -> dict:
    """Measure both ways; return the result record."""
    device = resolve_device(args.device)
    ds = load_dataset("digits")
    hidden = [int(h) for h in args.hidden.split(",")]
    data = TaskStack.from_splits([ds.train], device=device)
    template = build_model("mlp", {"hidden": hidden}, ds.input_shape, ds.n_classes).to(device)

    # Warm-up (allocator, kernels) on a small stack, not timed.
    train_stack(template, _hparams(8, args.lr, 1), torch.zeros(8, dtype=torch.long), data, 32)

    n = args.n_batched
    _sync(device)
    start = time.perf_counter()
    result = train_stack(
        template, _hparams(n, args.lr, args.epochs), torch.zeros(n, dtype=torch.long), data,
        args.batch_size,
    )  # fmt: skip
    _sync(device)
    batched_s = time.perf_counter() - start

    loop_models = []
    _sync(device)
    start = time.perf_counter()
    split = ds.train
    for seed in range(args.n_loop):
        model = build_model("mlp", {"hidden": hidden}, ds.input_shape, ds.n_classes).to(device)
        train_one(model, split, seed, args.lr, 0.0, args.epochs, args.batch_size)
        loop_models.append(model)
    _sync(device)
    loop_s = time.perf_counter() - start

    # Same computation? Weights agree to float noise, which Adam amplifies on weights whose
    # gradient is ~0 (its update is ~lr * sign(g)); the functions agree (test accuracy).
    max_diff, max_acc_diff = 0.0, 0.0
    x_test, y_test = ds.test.x.to(device), ds.test.y.to(device)
    for i, model in enumerate(loop_models):
        for name, value in model.state_dict().items():
            max_diff = max(max_diff, float((value.cpu() - result.final[name][i]).abs().max()))
        with torch.no_grad():
            acc_loop = (model(x_test).argmax(1) == y_test).float().mean()
            model.load_state_dict({k: v[i] for k, v in result.final.items()}, strict=False)
            acc_batched = (model(x_test).argmax(1) == y_test).float().mean()
        max_acc_diff = max(max_acc_diff, float((acc_loop - acc_batched).abs()))

    batched_rate = n / batched_s
    loop_rate = args.n_loop / loop_s
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "device": str(device),
        "device_name": name or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "arch": f"mlp 64-{'-'.join(map(str, hidden))}-10",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "steps_per_model": args.epochs * -(-len(ds.train) // args.batch_size),
        "n_batched": n,
        "batched_seconds": batched_s,
        "batched_models_per_second": batched_rate,
        "batched_models_per_minute": batched_rate * 60,
        "n_loop": args.n_loop,
        "loop_seconds": loop_s,
        "loop_models_per_second": loop_rate,
        "speedup": batched_rate / loop_rate,
        "max_abs_weight_diff_batched_vs_loop": max_diff,
        "max_abs_test_accuracy_diff_batched_vs_loop": max_acc_diff,
        "batched_mean_test_accuracy": float(_batched_accuracy(template, result, x_test, y_test)),
        "all_finite": bool(result.finite.all()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-batched", type=int, default=1000)
    parser.add_argument("--n-loop", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", default="32")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--out", default=None, help="JSON path (default: results/...)")
    args = parser.parse_args()
    record = run(args)
    rows = [
        ("way", "models", "seconds", "models/s", "models/min"),
        ("batched (vmap)", record["n_batched"], record["batched_seconds"],
         record["batched_models_per_second"], record["batched_models_per_minute"]),
        ("per-model loop", record["n_loop"], record["loop_seconds"],
         record["loop_models_per_second"], record["loop_models_per_second"] * 60),
    ]  # fmt: skip
    print(f"\nzoo throughput on {record['device_name']} ({record['device']}), {record['arch']}, "
          f"{record['epochs']} epochs, batch {record['batch_size']}")  # fmt: skip
    for row in rows:
        print("  ".join(f"{c:>16.2f}" if isinstance(c, float) else f"{c!s:>16}" for c in row))
    print(f"speedup batched / loop: {record['speedup']:.1f}x; same members: max |w_batched - "
          f"w_loop| = {record['max_abs_weight_diff_batched_vs_loop']:.2e}, max test-accuracy "
          f"difference {record['max_abs_test_accuracy_diff_batched_vs_loop']:.4f}; batched "
          f"mean test accuracy {record['batched_mean_test_accuracy']:.4f}")  # fmt: skip
    out = (
        Path(args.out)
        if args.out
        else RESULTS / f"zoo_throughput_{record['device'].split(':')[0]}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    record.update(code_version())  # the commit this figure comes from
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
