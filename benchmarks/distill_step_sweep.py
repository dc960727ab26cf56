"""TDiv−SDiv step size: LatentBE students distilled with larger and larger perturbations.

    python benchmarks/distill_step_sweep.py            # needs the teachers of
                                                       # kedro run --pipelines=distill

Reads the ``zoo_distill`` teachers and the distill settings of an environment, then for
every step in ``--steps`` (per-coordinate RMS, in units of the input range; 1/255 is the
default) distils one-to-one with TDiv−SDiv, merges (LatentBE), and scores on the test
split, over the settings' student seeds; the unperturbed LatentBE is the first row.
Prints a table and writes ``benchmarks/results/distill_step_sweep_<env>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import torch

from pipeline_targets import ROOT
from weightspace.data.embedded import load_mnist1d
from weightspace.ensembles import merge
from weightspace.evaluation import distill_protocol as dp
from weightspace.evaluation.distill_scores import Predictor, score_predictor
from weightspace.zoo import Zoo
from weightspace_kedro.pipelines.distill.settings import DistillSettings, resolve_teacher
from weightspace_kedro.typed import typed_settings


def _params(env: str) -> dict:
    from kedro.config import OmegaConfigLoader

    loader = OmegaConfigLoader(
        str(ROOT / "conf"),
        base_env="base",
        default_run_env=env,
        merge_strategy={"parameters": "soft"},
    )
    return loader["parameters"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="base")
    parser.add_argument("--steps", default="1,8,32", help="steps in units of 1/255")
    args = parser.parse_args()
    params = _params(args.env)
    settings = typed_settings(
        DistillSettings, params["distill"]["settings"], "distill.settings", "distill"
    )
    arch = resolve_teacher(settings, params["zoo_distill"]["grid"])
    zoo = Zoo.load(ROOT / "data/03_primary/zoo_distill")
    teachers = zoo.final_modules(settings.dataset, arch.name, arch.config)[: settings.members]
    data_cfg = params["zoo_distill"]["data"]
    data = load_mnist1d(seed=data_cfg["seed"], **(data_cfg["datasets"]["mnist1d"] or {}))
    rows = []
    for step in [None, *(float(s) / 255 for s in args.steps.split(","))]:
        protocol = dataclasses.replace(settings.protocol, step=step or settings.protocol.step)
        accs, nlls = [], []
        for seed in protocol.seeds:
            run = dp.train_be(
                teachers, data, protocol, seed, "none" if step is None else "tdiv_sdiv"
            )
            model = merge(run.model, protocol.merge)
            pred = Predictor(fn=model, modules=(model,), n_params=0, forward_passes=1)
            s = score_predictor(pred, data.val, data.test)
            accs.append(s.acc)
            nlls.append(s.nll)
        row = {
            "perturbation": "none" if step is None else "tdiv_sdiv",
            "step_x255": None if step is None else step * 255,
            "acc": statistics.mean(accs),
            "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "nll": statistics.mean(nlls),
            "nll_std": statistics.stdev(nlls) if len(nlls) > 1 else 0.0,
        }
        rows.append(row)
        step_text = "-" if step is None else f"{step * 255:g}/255"
        print(
            f"{row['perturbation']:>10} step {step_text:>7}: ACC {100 * row['acc']:.2f} ± "
            f"{100 * row['acc_std']:.2f}  NLL {row['nll']:.3f} ± {row['nll_std']:.3f}",
            flush=True,
        )
    out = ROOT / "benchmarks/results" / f"distill_step_sweep_{args.env}.json"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out.write_text(json.dumps({"device": device, "rows": rows}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
