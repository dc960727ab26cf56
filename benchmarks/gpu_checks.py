"""Correctness on a CUDA device: what must hold there before any GPU figure is trusted.

1. Initial weights drawn on the GPU are bit-identical to the CPU ones (counter-based RNG).
2. Batched training on the GPU reproduces the per-model loop on the GPU (SGD, every
   architecture of the registry, BatchNorm included).
3. Vectorize / chunk round trips are exact on the GPU.

Prints one line per check and writes ``benchmarks/results/gpu_checks.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from weightspace.data import Split
from weightspace.nets import build_model
from weightspace.weights import ChunkLayout, ParameterSpec, chunk, unchunk, unvectorize, vectorize
from weightspace.zoo.init import init_stack
from weightspace.zoo.reference import train_one
from weightspace.zoo.tasks import TaskStack
from weightspace.zoo.train import StackHParams, train_stack

ARCHS = [
    ("mlp", {"hidden": [32]}),
    ("vgg", {"stages": [[8], [16]]}),
    ("vgg", {"stages": [[8], [16]], "norm": "batch"}),
    ("resnet", {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_checks.json"))
    args = parser.parse_args()
    dev = torch.device("cuda")
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    splits = [Split(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))
              for n in (96, 70)]  # fmt: skip
    data = TaskStack.from_splits(splits, device=dev)
    results: dict[str, float | bool | str] = {"device_name": torch.cuda.get_device_name(dev)}
    for arch, cfg in ARCHS:
        tag = f"{arch}{'_bn' if cfg.get('norm') == 'batch' else ''}"
        template = build_model(arch, cfg, (1, 8, 8), 10)
        seeds = torch.arange(6)
        cpu = init_stack(template, seeds, 1.0, device="cpu")
        gpu = init_stack(template.to(dev), seeds.to(dev), 1.0, device=dev)
        results[f"{tag}.init_bit_identical"] = all(torch.equal(cpu[k], gpu[k].cpu()) for k in cpu)
        epochs = torch.tensor([2, 1, 2, 2, 1, 2])
        hp = StackHParams(seeds, torch.full((6,), 0.05), torch.zeros(6), epochs, torch.ones(6))
        task_index = torch.tensor([0, 1, 0, 1, 0, 1])
        res = train_stack(template, hp, task_index, data, 16, optimizer="sgd")
        worst = 0.0
        for i in range(6):
            model = build_model(arch, cfg, (1, 8, 8), 10).to(dev)
            train_one(model, splits[int(task_index[i])], int(seeds[i]), 0.05, 0.0,
                      int(hp.epochs[i]), 16, optimizer="sgd")  # fmt: skip
            for k, v in model.state_dict().items():
                if v.is_floating_point():
                    worst = max(worst, float((v.cpu() - res.final[k][i]).abs().max()))
        results[f"{tag}.batched_vs_loop_max_abs_diff"] = worst
        spec = ParameterSpec.from_module(template)
        stacked = {k: v.to(dev) for k, v in res.final.items()}
        flat = vectorize(stacked, spec)
        layout = ChunkLayout.from_spec(spec, 64)
        back = unvectorize(unchunk(chunk(flat, layout), layout), spec)
        results[f"{tag}.roundtrip_exact"] = all(torch.equal(back[k], stacked[k]) for k in stacked)
    ok = all(v for k, v in results.items() if k.endswith(("identical", "exact"))) and all(
        v < 1e-4 for k, v in results.items() if k.endswith("diff")
    )
    results["all_ok"] = ok
    for k, v in results.items():
        print(f"{k:45s} {v}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
