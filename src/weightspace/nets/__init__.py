"""Architectures: a registry of MLP, VGG-style CNN and small ResNet, and batched calls."""

from weightspace.nets.functional import batched_forward, float_buffers, stack_modules
from weightspace.nets.registry import (
    ARCHITECTURES,
    ArchSpec,
    build_model,
    register_architecture,
)

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "batched_forward",
    "build_model",
    "float_buffers",
    "register_architecture",
    "stack_modules",
]
