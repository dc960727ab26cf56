"""Frozen feature extractors and per-class feature sets (the D2NWG dataset-encoder input).

D2NWG encodes a dataset as per-class sets of features from a frozen image encoder (the
authors use CLIP: "features ... grouped by class ... shape (1, 10, 5, 512) for CIFAR-10
with 5 images per class"). No CLIP is available offline, so Weightspace uses the
penultimate layer of a network trained on the *base* classes only (as few-shot backbones
are trained on mini-ImageNet's base split): novel classes are then unseen by the
extractor as well as by the weight zoo.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from weightspace.device import module_device
from weightspace.errors import InvalidParameterError, ShapeError
from weightspace.nets.resnet import ResNet
from weightspace.nets.vgg import VGG


def penultimate(module: nn.Module) -> nn.Module:
    """``module`` without its final linear classifier.

    Supports the registry's architectures (MLP ``nn.Sequential``, :class:`VGG`,
    :class:`ResNet`) and any ``nn.Sequential`` that ends in ``nn.Linear``. The returned
    module shares parameters with ``module``.
    """
    if isinstance(module, VGG):
        return nn.Sequential(module.features, *list(module.classifier)[:-1])
    if isinstance(module, ResNet):
        return nn.Sequential(module.stem, module.layers, module.pool, nn.Flatten())
    if isinstance(module, nn.Sequential) and isinstance(module[-1], nn.Linear):
        return nn.Sequential(*list(module)[:-1])
    raise InvalidParameterError(
        f"cannot find the classifier of a {type(module).__name__}: penultimate() supports "
        "nn.Sequential ending in nn.Linear, VGG and ResNet"
    )


class FrozenFeatureExtractor(nn.Module):
    """A network's penultimate layer, frozen (eval mode, no gradients).

    Parameters
    ----------
    module : nn.Module
        A trained classifier; its last linear layer is dropped.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.body = penultimate(module).eval()
        for p in self.body.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenFeatureExtractor:
        """Stay in eval mode (BatchNorm statistics never change)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(N, d)`` of inputs ``(N, *input_shape)``."""
        return torch.flatten(self.body(x), 1)

    @torch.no_grad()
    def extract(self, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        """Features of many inputs, computed in batches on the extractor's device."""
        device = module_device(self.body)
        outs = [self(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
        return torch.cat(outs) if outs else torch.zeros(0, self.feature_dim(x.shape[1:]))

    def feature_dim(self, input_shape: Sequence[int]) -> int:
        """Feature size for inputs of ``input_shape``."""
        device = module_device(self.body)
        return int(self(torch.zeros(1, *input_shape, device=device)).shape[1])

    def fingerprint(self) -> str:
        """sha256 (hex) of what the extractor computes: its layers and their weights.

        Covers the module structure (``repr`` of the body: layer types and sizes) and every
        tensor of its ``state_dict`` (name, dtype, shape, bytes; BatchNorm statistics
        included), on the CPU. It depends only on the stored weights, never on the float
        rounding of a forward pass, so the torch thread count, the CPU's vector unit or the
        device cannot change it (:func:`~weightspace.data.class_pool.build_class_pool`
        names a pool by it).
        """
        h = hashlib.sha256()
        h.update(repr(self.body).encode())
        for name, t in self.body.state_dict().items():
            t = t.detach().cpu()
            array = np.ascontiguousarray((t.float() if t.dtype == torch.bfloat16 else t).numpy())
            array = array.astype(array.dtype.newbyteorder("<"), copy=False)
            h.update(f";{name}:{array.dtype.str}:{array.shape};".encode())
            h.update(array.reshape(-1).view(np.uint8))
        return h.hexdigest()


def class_feature_sets(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int],
    shots: int,
    seed: int,
) -> torch.Tensor:
    """Draw ``shots`` samples of each class, in the order of ``classes``.

    Parameters
    ----------
    features : Tensor (N, d)
    labels : LongTensor (N,)
    classes : sequence of int
        Class ids; slot ``k`` of the result holds class ``classes[k]``.
    shots : int
        Samples per class (drawn without replacement, deterministically from ``seed``).
    seed : int

    Returns
    -------
    Tensor (K, shots, d)
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ShapeError(
            f"features must be (N, d) and labels (N,), got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if shots < 1:
        raise InvalidParameterError(f"shots must be >= 1, got {shots}")
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for c in classes:
        idx = (labels == int(c)).nonzero().flatten()
        if len(idx) < shots:
            raise InvalidParameterError(
                f"class {c} has {len(idx)} samples but {shots} shots were asked for; lower "
                "shots or use a larger split"
            )
        pick = idx[torch.randperm(len(idx), generator=gen)[:shots]]
        out.append(features[pick])
    return torch.stack(out)


class ClassFeatureBank:
    """Per-task, per-class features from which fresh support sets are drawn.

    D2NWG draws a new conditioning sample at every batch ("we ensure diversity in the
    training data by sampling a new conditioned image at every batch"); the bank makes
    that a single gather.

    Parameters
    ----------
    feats : Tensor (T, K, N_max, d)
        Features of class ``k`` of task ``t`` (padded).
    counts : LongTensor (T, K)
        Real samples per class.
    """

    def __init__(self, feats: torch.Tensor, counts: torch.Tensor) -> None:
        if feats.ndim != 4 or counts.shape != feats.shape[:2]:
            raise ShapeError(
                f"feats must be (T, K, N, d) and counts (T, K), got {tuple(feats.shape)} "
                f"and {tuple(counts.shape)}"
            )
        if bool((counts < 1).any()):
            raise InvalidParameterError("every class of every task needs at least one sample")
        self.feats, self.counts = feats, counts

    @classmethod
    def from_splits(
        cls, splits: Sequence[tuple[torch.Tensor, torch.Tensor]], n_classes: int
    ) -> ClassFeatureBank:
        """Build from ``(features (N, d), labels (N,))`` per task, labels in ``[0, K)``."""
        per_task = [[x[y == k] for k in range(n_classes)] for x, y in splits]
        n_max = max(len(c) for task in per_task for c in task)
        d = splits[0][0].shape[1]
        feats = torch.zeros(len(splits), n_classes, n_max, d)
        counts = torch.zeros(len(splits), n_classes, dtype=torch.long)
        for t, task in enumerate(per_task):
            for k, c in enumerate(task):
                feats[t, k, : len(c)] = c
                counts[t, k] = len(c)
        return cls(feats, counts)

    def sample(self, tasks: torch.Tensor, shots: int, generator: torch.Generator) -> torch.Tensor:
        """Support sets ``(b, K, shots, d)`` for tasks ``(b,)`` (with replacement)."""
        counts = self.counts[tasks]  # (b, K)
        u = torch.rand((*counts.shape, shots), generator=generator)
        idx = (u * counts[..., None]).long()  # (b, K, S)
        t = tasks[:, None, None].expand_as(idx)
        k = torch.arange(counts.shape[1])[None, :, None].expand_as(idx)
        return self.feats[t, k, idx]
