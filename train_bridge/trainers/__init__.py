"""Architectures train_bridge can configure: the one table lives in `prep.archs`."""

from __future__ import annotations

from prep.archs import ARCH_NAMES, REGISTRY, ArchSpec, ModelArg, get_arch

__all__ = ["ARCH_NAMES", "REGISTRY", "ArchSpec", "ModelArg", "get_arch"]
