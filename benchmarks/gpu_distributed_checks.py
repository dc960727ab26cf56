"""Correctness of the multi-process code on GPUs: run under torchrun, rank 0 writes JSON.

    WEIGHTSPACE_DIST_BACKEND=gloo torchrun --standalone --nproc_per_node=2 \\
        benchmarks/gpu_distributed_checks.py --out checks.json

On a one-GPU box the two ranks share the GPU through gloo (a functional check of the
CUDA code paths, not a speed figure); with several GPUs and NCCL each rank has its own.
Checks, each against a single-process run on rank 0 of the same code and device:

* ``zoo``: a zoo of MLP and conv members sharded over the ranks vs trained by one
  process; max weight difference and the share of members that are bitwise equal;
* ``diffusion``: 10 data-parallel steps of the D2NWG diffusion loop (chunk denoiser,
  global batch 64 split over the ranks) vs one process with the same global batch; max
  weight difference (target 1e-5).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from weightspace.data import load_dataset
from weightspace.distributed import World, current_world, shutdown
from weightspace.generators.denoiser import ChunkDenoiser, ChunkDenoiserConfig
from weightspace.generators.diffusion import GaussianDiffusion
from weightspace.generators.diffusion_loop import train_diffusion_loop
from weightspace.generators.schedule import make_schedule
from weightspace.zoo import ZooRunOptions, expand_grid, train_zoo


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float().cpu() - b[k].float().cpu()).abs().max()) for k in a)


def check_zoo(world: World, tmp: str) -> dict:
    ds = {"digits": load_dataset("digits")}
    grid = {"tasks": [{"dataset": "digits"}, {"dataset": "digits", "classes": [0, 1, 2]}],
            "architectures": [{"name": "mlp", "config": {"hidden": [32]}},
                              {"name": "vgg", "config": {"stages": [[4]]}}],
            "seeds": 16, "train": {"epochs": 2, "lr": 0.01, "optimizer": "sgd"}}  # fmt: skip
    members = expand_grid(grid, {"digits": 10})
    options = ZooRunOptions(device="cuda", progress=False)
    root = Path(world.broadcast(tempfile.mkdtemp(prefix="zoo-sharded-", dir=tmp)))
    sharded, _ = train_zoo(members, ds, options=options, root=root, world=world)
    out: dict = {}
    if world.is_main:
        single, _ = train_zoo(members, ds, options=options, root=Path(tmp) / "single")
        diffs = {m: _max_diff(single.state(m), sharded.state(m)) for m in single.model_ids}
        archs = {m: single.row(m)["arch"] for m in single.model_ids}
        for arch in sorted(set(archs.values())):
            ids = [m for m in diffs if archs[m] == arch]
            equal = sum(diffs[m] == 0 for m in ids) / len(ids)
            out[arch] = {"members": len(ids), "max_abs_diff": max(diffs[m] for m in ids),
                         "bitwise_equal_share": equal}  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
    world.barrier()
    return out


def _diffusion(world: World) -> dict[str, torch.Tensor]:
    dev = world.device
    m, z, cond = 8, 8, 16
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(200, m, z, generator=gen).to(dev)
    conds = torch.randn(200, 2, cond, generator=gen).to(dev)
    torch.manual_seed(0)
    cfg = ChunkDenoiserConfig(n_chunks=m, latent_dim=z, n_layer_ids=2, cond_dim=cond, width=64,
                              depth=2, heads=4)  # fmt: skip
    den = ChunkDenoiser(cfg, torch.arange(m) % 2).to(dev)

    def batch(rows, pick, gen_dev):
        return latents[rows.to(dev)], conds[rows.to(dev), pick.to(dev)]

    training = SimpleNamespace(steps=10, batch_size=64, lr=1e-3, p_uncond=0.1, ema_decay=0.9)
    train_diffusion_loop("check", den, den, GaussianDiffusion(make_schedule("linear", 100)),
                         batch, 200, 2, training, seed=3, device=dev, world=world)  # fmt: skip
    return {k: v.detach().cpu().clone() for k, v in den.state_dict().items()}


def check_diffusion(world: World) -> dict:
    ddp = _diffusion(world)
    if not world.is_main:
        return {}
    single = _diffusion(World(device=world.device))
    diff = _max_diff(single, ddp)
    return {"max_abs_diff": diff, "within_1e-5": diff <= 1e-5}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    world = current_world("cuda")
    tmp = world.broadcast(tempfile.mkdtemp(prefix="gpu-dist-checks-"))
    record = {"ranks": world.world_size, "backend": world.backend,
              "gpus": torch.cuda.device_count(),
              "device": torch.cuda.get_device_name(0)}  # fmt: skip
    record["zoo"] = check_zoo(world, tmp)
    record["diffusion"] = check_diffusion(world)
    world.barrier()
    if world.is_main:
        Path(args.out).write_text(json.dumps(record, indent=2))
        print(json.dumps(record, indent=2))
        shutil.rmtree(tmp, ignore_errors=True)
    shutdown()


if __name__ == "__main__":
    main()
