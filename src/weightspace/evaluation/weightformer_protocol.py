"""WeightFormer's evaluation protocol (Fei et al., Sec. 4.1-4.3, Tables 1 and 4, Figure 3).

A pool of checkpoints of one architecture is split by checkpoint id into ``n_train``
training checkpoints and the held-out rest (Sec. 4.2: 60 and 12 of 72); teacher sets of
``T`` (3) are drawn from the held-out checkpoints only, and every method is scored on the
same sets:

- **Single**: the mean over the set's teachers of each teacher's scores;
- **Ensemble**: the mean of the teachers' logits (Sec. 4.1);
- **Teacher 0**: the set's first teacher alone, where the residual read-out and KD from
  teacher 0 start (not in the paper);
- **KD**: a student of the teachers' architecture trained from a random start on the
  set's mean tempered prediction (:func:`weightspace.ensembles.kd.distill`, the
  project's one KD);
- **KD from teacher 0** (``kd_from_teacher``, not in the paper): the same KD started from
  the set's first teacher, the start of WF's residual read-out, so the two are compared
  from the same point;
- **MLP**: :class:`~weightspace.generators.weightformer.LayerMLP`, trained like WF;
- **WF** and the ablations: generators trained on the training checkpoints;
- **WF***: WF fine-tuned on sets of the held-out checkpoints (Sec. 4.2).

Scores are ACC-1, ACC-5, ECE (15 bins, whole test split) and NLL, reported as mean and
2 sigma over the sets (Table 1). :func:`teacher_number_curve` gives Figure 3's
*concatenate* (all ``n`` teachers in one sequence) and *heuristic* (merge two at a time,
the generated student going back into the set) configurations.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from weightspace.checks import positive_number
from weightspace.data.base import SplitDataset
from weightspace.ensembles.kd import KDConfig, distill
from weightspace.errors import InvalidParameterError
from weightspace.generators.weight_tokens import TokenLayout, tokenize
from weightspace.generators.weightformer import student_logits, student_state
from weightspace.generators.weightformer_training import FitConfig
from weightspace.metrics import accuracy, ece, nll
from weightspace.zoo.init import reinitialized

__all__ = [
    "METRICS",
    "Scores",
    "WeightFormerProtocol",
    "evaluate_sets",
    "heldout_sets",
    "kd_targets",
    "score_logits",
    "split_pool",
    "teacher_number_curve",
]

METRICS: tuple[str, ...] = ("acc", "acc5", "ece", "nll")


@dataclass(frozen=True)
class WeightFormerProtocol:
    """The experiment: pool split, teacher sets, training of generators, KD baseline.

    Parameters
    ----------
    n_train : int
        Checkpoints used for training the generators; the rest are held out.
    n_sets : int
        Held-out teacher sets ``R`` every method is scored on.
    fit, finetune : FitConfig
        Training of WF / MLP / ablations (``fit``) and of WF* (``finetune``, on held-out
        sets).
    kd : KDConfig
        The KD baseline (fixed temperature, teachers' architecture).
    kd_from_teacher : KDConfig or None
        KD started from the set's first teacher (None: not run).
    pretrain_sets : int
        Training teacher sets whose KD students (``kd_from_teacher``, else ``kd``, started
        from the set's first teacher) are the L2 targets of WF's optional pre-training
        (Sec. 4.1); 0 turns pre-training off.
    pretrain_steps, pretrain_lr : int, float
        Adam steps and learning rate of that pre-training.
    mlp_hidden : int
        Hidden width of the MLP baseline.
    curve_max : int
        Largest teacher count of the heuristic curve.
    seed : int
        Seed of the split and the sets.
    n_bins : int
        ECE bins.
    """

    n_train: int = 60
    n_sets: int = 5
    fit: FitConfig = field(default_factory=FitConfig)
    finetune: FitConfig = field(
        default_factory=lambda: FitConfig(steps=200, eval_every=50, lr=3e-4)
    )
    kd: KDConfig = field(
        default_factory=lambda: KDConfig(
            epochs=20, lr=0.01, batch_size=64, optimizer="adam", temperature=4.0, alpha=0.9
        )
    )
    kd_from_teacher: KDConfig | None = None
    pretrain_sets: int = 0
    pretrain_steps: int = 1000
    pretrain_lr: float = 1e-3
    mlp_hidden: int = 64
    curve_max: int = 6
    seed: int = 0
    n_bins: int = 15

    def __post_init__(self) -> None:
        for name in ("n_train", "n_sets", "mlp_hidden", "curve_max", "n_bins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("pretrain_sets", "pretrain_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidParameterError(f"{name} must be an integer >= 0, got {value!r}")
        positive_number("pretrain_lr", self.pretrain_lr, "Adam's usual range is 1e-4 to 1e-2")
        if self.curve_max < 2:
            raise InvalidParameterError(f"curve_max must be >= 2, got {self.curve_max}")

    @property
    def n_teachers(self) -> int:
        """Teachers per set (the generators' ``fit.n_teachers``)."""
        return self.fit.n_teachers


@dataclass(frozen=True)
class Scores:
    """ACC-1, ACC-5, ECE and NLL of one model (or the mean of several) on the test split."""

    acc: float
    acc5: float
    ece: float
    nll: float

    @staticmethod
    def mean(rows: Sequence[Scores]) -> Scores:
        """Field-wise mean."""
        return Scores(*(sum(getattr(r, m) for r in rows) / len(rows) for m in METRICS))


def score_logits(logits: Tensor, labels: Tensor, n_bins: int = 15) -> Scores:
    """:class:`Scores` of logits ``(N, C)``; ACC-5 is NaN when ``C < 10``."""
    k5 = float(accuracy(logits, labels, k=5)) if logits.shape[-1] >= 10 else math.nan
    return Scores(
        acc=float(accuracy(logits, labels)),
        acc5=k5,
        ece=float(ece(logits.softmax(-1), labels, n_bins=n_bins)),
        nll=float(nll(logits, labels)),
    )


def split_pool(model_ids: Sequence[str], n_train: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of checkpoint ids into training and held-out ids (disjoint, asserted).

    Raises
    ------
    InvalidParameterError
        If fewer than ``n_train + 1`` checkpoints are given or ids repeat.
    """
    ids = list(model_ids)
    if len(set(ids)) != len(ids):
        raise InvalidParameterError("checkpoint ids repeat; each checkpoint must appear once")
    if len(ids) <= n_train:
        raise InvalidParameterError(
            f"the pool has {len(ids)} checkpoints but n_train = {n_train}: at least one must "
            "be held out for evaluation (the paper: 60 of 72)"
        )
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    train, held = [ids[i] for i in order[:n_train]], [ids[i] for i in order[n_train:]]
    assert not set(train) & set(held)
    return sorted(train), sorted(held)


def heldout_sets(n_heldout: int, protocol: WeightFormerProtocol) -> Tensor:
    """The ``R`` evaluation sets ``(R, T)`` of held-out indices (seeded, no repeats in a set)."""
    t = protocol.n_teachers
    if n_heldout < t:
        raise InvalidParameterError(f"{n_heldout} held-out checkpoints cannot form sets of {t}")
    gen = torch.Generator().manual_seed(protocol.seed + 1)
    return torch.stack(
        [torch.randperm(n_heldout, generator=gen)[:t] for _ in range(protocol.n_sets)]
    )


def _modules(template: nn.Module, pool: Mapping[str, Tensor], idx: Tensor) -> list[nn.Module]:
    """Plain modules of the pool checkpoints ``idx`` (the template's buffers kept)."""
    out = []
    for i in idx.tolist():
        m = reinitialized(template, 0)
        m.load_state_dict({k: v[i] for k, v in pool.items()}, strict=False)
        out.append(m.eval())
    return out


@torch.no_grad()
def _generate(gen: nn.Module, pool: Mapping[str, Tensor], idx: Tensor) -> list[Tensor]:
    """Student tokens of the set ``idx`` (generator in eval mode)."""
    gen.eval()
    return gen([t[None] for t in tokenize(gen.layout, {k: v[idx] for k, v in pool.items()})])


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so wall-clock times measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _generated_scores(
    gen: nn.Module, template: nn.Module, pool: Mapping[str, Tensor], idx: Tensor, data, n_bins: int
) -> tuple[Scores, float]:
    """Scores of the generated student of one set, and the seconds to generate it."""
    _sync(data.test.x.device)
    t0 = time.perf_counter()
    state = student_state(gen.layout, _generate(gen, pool, idx))
    _sync(data.test.x.device)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        logits = student_logits(template, state, data.test.x)
    return score_logits(logits, data.test.y, n_bins), seconds


def evaluate_sets(
    template: nn.Module,
    pool: Mapping[str, Tensor],
    data: SplitDataset,
    generators: Mapping[str, nn.Module],
    protocol: WeightFormerProtocol,
) -> dict[str, object]:
    """Score every method on the held-out sets.

    Parameters
    ----------
    template : nn.Module
        The architecture (buffers of every student).
    pool : mapping name -> Tensor (H, *shape)
        The held-out checkpoints.
    data : SplitDataset
    generators : mapping name -> generator
        e.g. ``{"wf": ..., "wf_star": ..., "mlp": ..., "wf_no_cross": ...}``.
    protocol : WeightFormerProtocol

    Returns
    -------
    dict
        ``"scores"``: method -> list of :class:`Scores` (one per set);
        ``"seconds"``: ``{"kd": [...], "<generator>": [...]}`` per student.
    """
    n_held = next(iter(pool.values())).shape[0]
    sets = heldout_sets(n_held, protocol)
    scores: dict[str, list[Scores]] = {}
    seconds: dict[str, list[float]] = {}
    x, y, nb = data.test.x, data.test.y, protocol.n_bins
    for r, idx in enumerate(sets):
        teachers = _modules(template, pool, idx)
        with torch.no_grad():
            logits = torch.stack([t(x) for t in teachers])
        scores.setdefault("single", []).append(
            Scores.mean([score_logits(lg, y, nb) for lg in logits])
        )
        scores.setdefault("ensemble", []).append(score_logits(logits.mean(0), y, nb))
        scores.setdefault("teacher0", []).append(score_logits(logits[0], y, nb))
        starts = {"kd": (protocol.kd, reinitialized(template, 5000 + r))}
        if protocol.kd_from_teacher is not None:
            starts["kd_t0"] = (protocol.kd_from_teacher, _modules(template, pool, idx[:1])[0])
        for name, (kd_cfg, start) in starts.items():
            kd = distill(start, teachers, data.train, dataclasses.replace(kd_cfg, seed=r), data.val)
            seconds.setdefault(name, []).append(kd.seconds)
            with torch.no_grad():
                scores.setdefault(name, []).append(score_logits(kd.model(x), y, nb))
        for name, gen in generators.items():
            row, sec = _generated_scores(gen, template, pool, idx, data, nb)
            scores.setdefault(name, []).append(row)
            seconds.setdefault(name, []).append(sec)
    return {"scores": scores, "seconds": seconds}


def kd_targets(
    template: nn.Module,
    pool: Mapping[str, Tensor],
    sets: Tensor,
    data: SplitDataset,
    protocol: WeightFormerProtocol,
) -> list[dict[str, Tensor]]:
    """KD students of ``sets`` ``(S, T)`` of ``pool``, each started from its first teacher.

    The L2 targets of :func:`~weightspace.generators.weightformer_training.
    pretrain_weightformer`: started from teacher 0 they keep its unit order, which the
    residual read-out starts from.
    """
    cfg = protocol.kd_from_teacher or protocol.kd
    out = []
    for r, idx in enumerate(sets):
        teachers = _modules(template, pool, idx)
        start = _modules(template, pool, idx[:1])[0]
        kd = distill(start, teachers, data.train, dataclasses.replace(cfg, seed=r), data.val)
        out.append({k: v.detach() for k, v in kd.model.state_dict().items()})
    return out


@torch.no_grad()
def teacher_number_curve(
    gen: nn.Module,
    template: nn.Module,
    pool: Mapping[str, Tensor],
    data: SplitDataset,
    protocol: WeightFormerProtocol,
) -> dict[str, list[tuple[int, float]]]:
    """Figure 3: test accuracy of the generated student against the teacher count.

    ``concatenate``: the first ``n`` held-out checkpoints in one sequence, ``n`` from 1 to
    the generator's ``max_teachers``. ``heuristic``: ``n`` from 2 to ``curve_max``; two
    teachers at a time are merged by the generator and the student goes back into the
    set, until one model remains.
    """
    gen.eval()
    layout: TokenLayout = gen.layout
    n_held = next(iter(pool.values())).shape[0]
    toks = tokenize(layout, pool)  # (H, n_out, w) per layer

    def acc(student_tokens: list[Tensor]) -> float:
        state = student_state(layout, [t[None] if t.ndim == 2 else t for t in student_tokens])
        return float(accuracy(student_logits(template, state, data.test.x), data.test.y))

    concat = []
    for n in range(1, min(gen.config.max_teachers, n_held) + 1):
        out = gen([t[None, :n] for t in toks])
        concat.append((n, acc([o[0] for o in out])))
    heuristic = []
    for n in range(2, min(protocol.curve_max, n_held) + 1):
        members = [[t[i] for t in toks] for i in range(n)]
        while len(members) > 1:
            a, b = members.pop(0), members.pop(0)
            out = gen([torch.stack([ta, tb])[None] for ta, tb in zip(a, b, strict=True)])
            members.append([o[0] for o in out])
        heuristic.append((n, acc(members[0])))
    return {"concatenate": concat, "heuristic": heuristic}
