"""One measurement of ``benchmarks/scaleout.py``, run by torchrun on every rank.

    torchrun --standalone --nproc_per_node=N benchmarks/scaleout_worker.py zoo --out F.json
    torchrun --standalone --nproc_per_node=N benchmarks/scaleout_worker.py diffusion --out F.json

``zoo``: ``train_zoo`` of digits MLPs (64-32-10, Adam, batch 32) into a fresh folder,
members sharded over the ranks (:mod:`weightspace.zoo.sharded`), timed from a barrier to
the merged index. ``diffusion``: the D2NWG diffusion loop
(:func:`weightspace.generators.diffusion_loop.train_diffusion_loop`) with the GPU
config's chunk denoiser on synthetic latents of a fixed shape, data-parallel (DDP), timed
from a barrier to the last step (first steps excluded as warm-up). Rank 0 writes the
record.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
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


def _sync(world: World) -> None:
    if world.device.type == "cuda":
        torch.cuda.synchronize(world.device)
    world.barrier()


def zoo(world: World, args: argparse.Namespace) -> dict:
    """Train ``args.members`` MLPs (64-32-10) sharded over the ranks; models per second."""
    ds = {"digits": load_dataset("digits")}
    grid = {"tasks": [{"dataset": "digits"}], "architectures": [{"name": "mlp",
            "config": {"hidden": [32]}}], "seeds": args.members,
            "train": {"epochs": args.epochs, "lr": 0.01, "batch_size": 32}}  # fmt: skip
    members = expand_grid(grid, {"digits": 10})
    root = Path(world.broadcast(tempfile.mkdtemp(prefix="scaleout-zoo-", dir=args.tmp)))
    options = ZooRunOptions(device=str(world.device.type), max_stack=args.max_stack,
                            progress=False)  # fmt: skip
    _sync(world)
    start = time.perf_counter()
    z, report = train_zoo(members, ds, options=options, root=root, world=world)
    _sync(world)
    seconds = time.perf_counter() - start
    acc = float(z.index["test_accuracy"].mean())
    if world.is_main:
        shutil.rmtree(root, ignore_errors=True)
    return {"members": len(members), "epochs": args.epochs, "seconds": seconds,
            "models_per_second": len(members) / seconds, "n_trained": report.n_trained,
            "mean_test_accuracy": acc}  # fmt: skip


def diffusion(world: World, args: argparse.Namespace) -> dict:
    """``args.steps`` data-parallel diffusion steps; seconds per step after warm-up."""
    m, z, cond = args.chunks, args.latent, 64
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(args.rows, m, z, generator=gen).to(world.device)
    conds = torch.randn(args.rows, 4, cond, generator=gen).to(world.device)
    cfg = ChunkDenoiserConfig(n_chunks=m, latent_dim=z, n_layer_ids=2, cond_dim=cond,
                              width=256, depth=6, heads=8)  # fmt: skip
    torch.manual_seed(0)
    denoiser = ChunkDenoiser(cfg, torch.arange(m) % 2).to(world.device)
    dev = world.device

    def batch(rows: torch.Tensor, pick: torch.Tensor, gen_dev: torch.Generator):
        rows, pick = rows.to(dev), pick.to(dev)
        return latents[rows], conds[rows, pick]

    diff = GaussianDiffusion(make_schedule("linear", 1000))
    times: dict[str, float] = {}
    for label, steps in (("warmup", args.warmup), ("timed", args.warmup + args.steps)):
        training = SimpleNamespace(steps=steps, batch_size=args.batch_size, lr=3e-4,
                                   p_uncond=0.1, ema_decay=0.999)  # fmt: skip
        _sync(world)
        start = time.perf_counter()
        losses = train_diffusion_loop("bench", denoiser, denoiser, diff, batch, args.rows, 4,
                                      training, seed=0, device=dev, world=world)  # fmt: skip
        _sync(world)
        times[label] = time.perf_counter() - start
    per_step = (times["timed"] - times["warmup"]) / args.steps
    return {"steps": args.steps, "batch_size": args.batch_size, "latent_shape": [m, z],
            "denoiser": "ChunkDenoiser width 256 depth 6 heads 8", "seconds_per_step": per_step,
            "seconds": per_step * args.steps, "last_loss": losses[-1]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("what", choices=["zoo", "diffusion"])
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--members", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-stack", type=int, default=65536)
    p.add_argument("--tmp", default=None, help="folder for the zoo (shared by the ranks)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--rows", type=int, default=10000)
    p.add_argument("--chunks", type=int, default=12)
    p.add_argument("--latent", type=int, default=16)
    args = p.parse_args()
    world = current_world(args.device)
    record = {"ranks": world.world_size, "backend": world.backend or "none",
              "device": torch.cuda.get_device_name(world.device) if world.device.type == "cuda"
              else "cpu"}  # fmt: skip
    record |= zoo(world, args) if args.what == "zoo" else diffusion(world, args)
    if world.is_main:
        Path(args.out).write_text(json.dumps(record, indent=2))
    shutdown()


if __name__ == "__main__":
    main()
