"""Training the class-wise D2NWG generator: anchor, alignment, diffusion.

The stages of :class:`~weightspace.generators.classwise.ClassWiseD2NWG` (see that module
for the method and the paper sections it follows): :func:`fit_anchor` (closed form),
:func:`fit_class_alignment` (the paper's contrastive alignment, per class),
:func:`fit_classwise_diffusion` (the shared loop of
:mod:`weightspace.generators.diffusion_loop`), and :func:`fit_classwise`, all three.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from weightspace.data.features import ClassFeatureBank
from weightspace.distributed import SINGLE, World
from weightspace.errors import ShapeError
from weightspace.generators.alignment import clip_loss
from weightspace.generators.class_rows import centre_rows, metric_rows, within_class_metric
from weightspace.generators.classwise import ClassWiseD2NWG
from weightspace.generators.data_parallel import check_same_data, sync_module
from weightspace.generators.diffusion_loop import train_diffusion_loop
from weightspace.generators.known_classes import fit_known_classes
from weightspace.generators.training_checkpoint import CheckpointPolicy

SAMPLE_TIME_BUFFERS = ("known_centres", "novelty_tau")
"""Buffers of the known-class test: fitted in stage 1, read only when sampling."""


def _check_rows(rows: torch.Tensor, task_of_row: torch.Tensor, bank: ClassFeatureBank) -> None:
    if rows.ndim != 3 or task_of_row.shape != rows.shape[:1]:
        raise ShapeError(
            f"rows must be (N, K, d + 1) with task_of_row (N,), got {tuple(rows.shape)} and "
            f"{tuple(task_of_row.shape)}"
        )
    if bank.counts.shape[1] != rows.shape[1]:
        raise ShapeError(
            f"the feature bank has {bank.counts.shape[1]} classes per task, the heads "
            f"{rows.shape[1]}"
        )


def bank_class_means(bank: ClassFeatureBank) -> torch.Tensor:
    """Mean feature ``(T, K, d)`` of every class of every task of the bank."""
    idx = torch.arange(bank.feats.shape[2])
    real = (idx[None, None, :] < bank.counts[..., None]).to(bank.feats.dtype)
    return (bank.feats * real[..., None]).sum(2) / bank.counts[..., None]


@torch.no_grad()
def fit_anchor(
    model: ClassWiseD2NWG,
    bank: ClassFeatureBank,
    task_of_row: torch.Tensor,
    rows: torch.Tensor,
    task_classes: torch.Tensor,
    seed: int = 0,
) -> dict[str, float]:
    """Stage 1 (closed form): feature standardization, the metric, the anchor scale and
    the known-class test (:mod:`~weightspace.generators.known_classes`, seeded by
    ``seed``).

    Parameters
    ----------
    bank : ClassFeatureBank
        Training features of every zoo task, per class.
    task_of_row : LongTensor (N,)
    rows : Tensor (N, K, d + 1)
        The zoo's heads as class rows.
    task_classes : LongTensor (T, K)
        Pool class id of each class of each zoo task (one class's samples are counted
        once for the covariance however many tasks hold it).

    Returns
    -------
    dict
        ``anchor_scale``; ``anchor_row_r2``: the share of the zoo rows' variance (in the
        model's centred coordinates) the scaled anchors explain; ``known_classes`` (the
        number of zoo classes the known-class test matches against, 0 when the test is
        off or there is no anchor) and ``novelty_tau`` (only when the test is on).
    """
    _check_rows(rows, task_of_row, bank)
    dev = model.metric.device
    feats, labels = _unique_class_samples(bank, task_classes)
    model.feat_mean.copy_(feats.mean(0).to(dev))
    model.feat_std.copy_(feats.std(0).clamp_min(1e-6).to(dev))
    if model.config.anchor == "lda":
        model.metric.copy_(within_class_metric(feats, labels, model.config.shrinkage).to(dev))
    else:
        model.metric.copy_(torch.eye(model.feature_dim, device=dev))
    model.known_centres = torch.zeros(0, model.feature_dim, device=dev)
    model.novelty_tau.fill_(float("inf"))
    if model.config.anchor == "none":
        model.anchor_scale.zero_()
        return {"anchor_scale": 0.0, "anchor_row_r2": 0.0, "known_classes": 0.0}
    # Rows are defined up to a shift shared by the classes (softmax): compare centred,
    # in the model's coordinates (features centred at their mean).
    means = bank_class_means(bank)[task_of_row].to(dev) - model.feat_mean
    a = centre_rows(metric_rows(means, model.metric))
    r = model.centred_rows(rows.to(dev))
    # The scale is fitted on the weights: the anchor's bias is a function of its weights
    # (b_c = -w_c . mu_c / 2).
    scale = (a[..., :-1] * r[..., :-1]).sum() / (a[..., :-1] ** 2).sum().clamp_min(1e-12)
    model.anchor_scale.fill_(float(scale))
    resid = ((r - scale * a) ** 2).sum() / (r**2).sum().clamp_min(1e-12)
    out = {"anchor_scale": float(scale), "anchor_row_r2": float(1 - resid)}
    q = model.config.novelty_quantile
    if q is not None:
        centres, tau = fit_known_classes(
            feats.to(dev) - model.feat_mean, labels.to(dev), model.metric, model.config.shots,
            q, seed, way=int(task_classes.shape[1]),
        )  # fmt: skip
        model.known_centres = centres
        model.novelty_tau.fill_(tau)
        out["novelty_tau"] = tau
    out["known_classes"] = float(model.known_centres.shape[0])
    return out


def _unique_class_samples(
    bank: ClassFeatureBank, task_classes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pool class's samples once: features ``(N, d)`` and pool labels ``(N,)``."""
    if task_classes.shape != bank.counts.shape:
        raise ShapeError(
            f"task_classes must be (T, K) = {tuple(bank.counts.shape)}, got "
            f"{tuple(task_classes.shape)}"
        )
    feats, labels, done = [], [], set()
    for t, k in torch.nonzero(torch.ones_like(task_classes)).tolist():
        c = int(task_classes[t, k])
        if c in done:
            continue
        done.add(c)
        n = int(bank.counts[t, k])
        feats.append(bank.feats[t, k, :n])
        labels.append(torch.full((n,), c))
    return torch.cat(feats), torch.cat(labels)


def fit_class_alignment(
    model: ClassWiseD2NWG,
    bank: ClassFeatureBank,
    task_of_row: torch.Tensor,
    rows: torch.Tensor,
    task_classes: torch.Tensor,
    seed: int,
    progress: bool = False,
) -> list[float]:
    """Stage 2: contrastive alignment of class embeddings to the zoo's class rows.

    Each item is one class of one zoo head: a fresh ``shots``-sample set of that class
    (encoder -> ``class_proj``) against that head's row of the class (standardized ->
    ``row_proj``), :func:`~weightspace.generators.alignment.clip_loss` with the pool
    class as group label. Returns the mean loss of every epoch.
    """
    _check_rows(rows, task_of_row, bank)
    cfg, dev = model.config.align, model.metric.device
    n, k = rows.shape[:2]
    flat_rows = model.centred_rows(rows.to(dev)).reshape(n * k, -1)
    model.row_mean.copy_(flat_rows.mean(0))
    model.row_std.copy_(flat_rows.std(0).clamp_min(1e-6))
    target = (flat_rows - model.row_mean) / model.row_std
    item_task = task_of_row.repeat_interleave(k)
    item_class = torch.arange(k).repeat(n)
    item_label = task_classes[item_task, item_class]
    params = [*model.encoder.parameters(), *model.class_proj.parameters(),
              *model.row_proj.parameters()]  # fmt: skip
    opt = torch.optim.Adam(params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    model.encoder.train()
    losses = []
    for _ in tqdm(range(cfg.epochs), desc="class alignment", disable=not progress):
        order = torch.randperm(n * k, generator=gen)
        epoch = []
        for batch in order.split(cfg.batch_size):
            if len(batch) < 2:
                continue
            sets = bank.sample(item_task[batch], model.config.shots, gen)
            own = sets[torch.arange(len(batch)), item_class[batch]].unsqueeze(1).to(dev)
            e = model.class_embeddings(own).squeeze(1)
            loss = clip_loss(
                model.class_proj(e), model.row_proj(target[batch.to(dev)]),
                cfg.temperature, labels=item_label[batch],
            )  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            epoch.append(float(loss.detach()))
        losses.append(sum(epoch) / max(len(epoch), 1))
    model.encoder.eval()
    return losses


def fit_classwise_diffusion(
    model: ClassWiseD2NWG,
    bank: ClassFeatureBank,
    task_of_row: torch.Tensor,
    rows: torch.Tensor,
    seed: int,
    progress: bool = False,
    checkpoint: CheckpointPolicy | None = None,
    world: World = SINGLE,
) -> list[float]:
    """Stage 3: diffusion on residual rows, conditioned per class, encoder frozen.

    ``sets_per_task`` support sets per zoo task are drawn once; each gives a condition and
    an anchor; a training item is (zoo head, one of its task's sets) and its clean target
    is the head's rows (model coordinates) minus that set's anchor, standardized with
    statistics fitted here over all items. Returns the loss of every ``steps // 100``-th
    step; the EMA weights are copied into the denoiser at the end. ``checkpoint``: as
    :func:`~weightspace.generators.d2nwg.fit_diffusion`. ``world``: data-parallel, as
    there.
    """
    _check_rows(rows, task_of_row, bank)
    cfg, dev = model.config, model.metric.device
    ck = None
    if checkpoint is not None:
        # Rules of sampling (the known-class test, identification, DDIM settings) do not
        # change what the diffusion learns: they stay out of the checkpoint's identity.
        sample_time = ("sampling", "identify", "novelty_quantile")
        run = {"config": {k: v for k, v in cfg.to_dict().items() if k not in sample_time},
               "seed": seed, "device": dev.type}  # fmt: skip
        state = [v for k, v in model.state_dict().items() if k not in SAMPLE_TIME_BUFFERS]
        tensors = (rows, task_of_row, bank.feats, bank.counts, *state)
        ck = checkpoint.open("classwise_diffusion", run, *tensors)
    sync_module(model, world)
    check_same_data(world, "class-wise diffusion", rows, task_of_row, bank.feats, bank.counts)
    model.encoder.requires_grad_(False).eval()
    n_tasks = int(task_of_row.max()) + 1
    gen_pool = torch.Generator().manual_seed(seed)
    tasks = torch.arange(n_tasks).repeat_interleave(cfg.sets_per_task)
    conds, anchors = [], []
    with torch.no_grad():
        for chunk in tasks.split(1024):
            sets = bank.sample(chunk, cfg.shots, gen_pool).to(dev)
            c = model.condition(sets)
            conds.append(c if c is not None else sets.new_zeros(len(chunk), 0))
            anchors.append(model.centred_anchor_rows(sets))
    p = cfg.sets_per_task
    cond_pool = torch.cat(conds).view(n_tasks, p, *conds[0].shape[1:])
    anchor_pool = torch.cat(anchors).view(n_tasks, p, *anchors[0].shape[1:])
    rows_dev, tor_dev = model.centred_rows(rows.to(dev)), task_of_row.to(dev)
    with torch.no_grad():  # residual statistics over every (head, set) pair
        res = rows_dev[:, None] - anchor_pool[tor_dev]
        flat = res.reshape(-1, model.row_dim)
        model.res_mean.copy_(flat.mean(0))
        model.res_std.copy_(flat.std(0).clamp_min(1e-6))
        del res, flat

    def batch(r: torch.Tensor, pick: torch.Tensor, gen_dev: torch.Generator):
        r, pick = r.to(dev), pick.to(dev)
        t = tor_dev[r]
        x0 = (rows_dev[r] - anchor_pool[t, pick] - model.res_mean) / model.res_std
        return x0, (cond_pool[t, pick] if cfg.conditional else None)

    model.denoiser.train()
    losses = train_diffusion_loop(
        "classwise diffusion", model.denoiser, model.denoiser, model.diffusion, batch,
        rows.shape[0], p, cfg.diffusion, seed, dev, progress=progress, ck=ck, gen_cpu=gen_pool,
        world=world,
    )  # fmt: skip
    model.eval()
    return losses


def fit_classwise(
    model: ClassWiseD2NWG,
    bank: ClassFeatureBank,
    task_of_row: torch.Tensor,
    rows: torch.Tensor,
    task_classes: torch.Tensor,
    seed: int,
    align: bool = True,
    progress: bool = False,
    checkpoint: CheckpointPolicy | None = None,
    world: World = SINGLE,
) -> dict[str, Any]:
    """The three stages in order (alignment skipped when ``align`` is false or the model
    is unconditional): anchor report, alignment losses, diffusion losses. ``world``: the
    diffusion stage runs data-parallel over it (the cheap anchor and alignment stages run
    on every rank alike, then rank 0's weights are copied to the others)."""
    report = fit_anchor(model, bank, task_of_row, rows, task_classes, seed)
    align_losses: list[float] = []
    if align and model.config.conditional:
        align_losses = fit_class_alignment(
            model, bank, task_of_row, rows, task_classes, seed, progress=progress
        )
    losses = fit_classwise_diffusion(
        model, bank, task_of_row, rows, seed, progress=progress, checkpoint=checkpoint,
        world=world,
    )  # fmt: skip
    return {"anchor": report, "align_losses": align_losses, "diffusion_losses": losses}


__all__ = [
    "bank_class_means",
    "fit_anchor",
    "fit_class_alignment",
    "fit_classwise",
    "fit_classwise_diffusion",
]
