"""Nodes of the distill pipeline: typed settings, teachers from the zoo, one node per
student family (KD, BE, BE + each perturbation), scoring, the LatentBE students' weights,
report. Each node is one call into :mod:`weightspace.evaluation.distill_protocol` or
:mod:`weightspace.reporting.distill_report`; stage wall times come from the project hook
(``distill.node_seconds``)."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from tqdm.auto import tqdm

from weightspace.data import SplitDataset
from weightspace.device import resolve_device
from weightspace.ensembles.latentbe import merge
from weightspace.errors import EmptyZooError
from weightspace.evaluation import distill_protocol as dp
from weightspace.evaluation.distill_scores import DistillScores
from weightspace.reporting import distill_report as dr
from weightspace.zoo import Zoo
from weightspace.zoo.grid import ArchEntry
from weightspace_kedro.pipelines.distill.settings import GRID, DistillSettings, resolve_teacher
from weightspace_kedro.typed import typed_settings

Teachers = dict[str, Any]


def build_settings(
    params: dict[str, Any], grid: dict[str, Any]
) -> tuple[DistillSettings, ArchEntry]:
    """``distill.settings`` typed, and the ``zoo_distill.grid`` entry of the teachers."""
    settings = typed_settings(DistillSettings, params, "distill.settings", "distill")
    return settings, resolve_teacher(settings, grid)


def collect_teachers(
    zoo: Zoo, datasets: dict[str, SplitDataset], settings: DistillSettings, arch: ArchEntry
) -> Teachers:
    """The first M seeds of the teacher entry (on the device) and their dataset."""
    members = zoo.final_modules(settings.dataset, arch.name, arch.config)
    if len(members) < settings.members:
        raise EmptyZooError(
            f"the distill zoo has {len(members)} trained {arch.key!r} models on "
            f"{settings.dataset!r} but distill.settings.members = {settings.members}; train "
            f"more seeds in {GRID}.seeds"
        )
    device = resolve_device(settings.device)
    teachers = dp.check_teachers([m.to(device).eval() for m in members[: settings.members]])
    return {"teachers": teachers, "data": datasets[settings.dataset]}


def _runs(teachers: Teachers, settings: DistillSettings, kind: str | None) -> list[dp.Trained]:
    """Students of one family for every seed: KD (``kind=None``) or BE with ``kind``."""
    protocol = settings.protocol
    if kind not in (None, "none") and kind not in protocol.perturbations:
        return []  # this perturbation is switched off in distill.settings.protocol
    runs = []
    label = "KD" if kind is None else f"BE ({kind})"
    for seed in tqdm(protocol.seeds, desc=f"distill {label}"):
        t, data = teachers["teachers"], teachers["data"]
        if kind is None:
            runs.append(dp.train_kd(t, data, protocol, seed))
        else:
            runs.append(dp.train_be(t, data, protocol, seed, kind))
    return runs


def distill_kd(teachers: Teachers, settings: DistillSettings) -> list[dp.Trained]:
    """Plain KD students (Hinton et al.), one per seed."""
    return _runs(teachers, settings, None)


def distill_be(teachers: Teachers, settings: DistillSettings) -> list[dp.Trained]:
    """BatchEnsemble students, one-to-one KD without perturbation."""
    return _runs(teachers, settings, "none")


def distill_be_ods(teachers: Teachers, settings: DistillSettings) -> list[dp.Trained]:
    """BatchEnsemble students with ODS perturbations (eq. 7)."""
    return _runs(teachers, settings, "ods")


def distill_be_confods(teachers: Teachers, settings: DistillSettings) -> list[dp.Trained]:
    """BatchEnsemble students with ConfODS perturbations."""
    return _runs(teachers, settings, "confods")


def distill_be_tdiv_sdiv(teachers: Teachers, settings: DistillSettings) -> list[dp.Trained]:
    """BatchEnsemble students with TDiv−SDiv perturbations (eq. 8)."""
    return _runs(teachers, settings, "tdiv_sdiv")


def evaluate(
    teachers: Teachers, settings: DistillSettings, *runs: list[dp.Trained]
) -> DistillScores:
    """Score DE, members and every student (``runs``: the lists of the training nodes)."""
    flat = [r for family in runs for r in family]
    return dp.evaluate_distillation(teachers["teachers"], teachers["data"], flat, settings.protocol)


def latentbe_bundle(settings: DistillSettings, *runs: list[dp.Trained]) -> dict[str, Any]:
    """Every merged LatentBE student (``latentbe[_<kind>]/seed<s>/<param>``), one bundle."""
    tensors, meta = {}, {}
    for run in (r for family in runs for r in family if r.method != "kd"):
        name = "latentbe" + run.method[len("be") :]
        model = merge(run.model, how=settings.protocol.merge)
        for k, v in model.state_dict().items():
            tensors[f"{name}/seed{run.seed}/{k}"] = v.detach().cpu().contiguous()
        meta[f"{name}/seed{run.seed}"] = {
            "class": type(model).__name__,
            "merge": settings.protocol.merge,
        }
    return {"tensors": tensors, "metadata": meta}


def report(
    scores: DistillScores, node_seconds: dict[str, float]
) -> tuple[dict[str, float], str, Figure]:
    """metrics.json, tables.md and the reliability diagrams."""
    return dr.assemble_report(scores, node_seconds)
