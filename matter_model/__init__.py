"""MATTER: self-supervised material and texture embeddings of Sentinel-2 imagery.

``matter_model.load(folder)`` returns an exported model and the callable that prepares images
for it (:mod:`matter_model.pretrained`); it is imported on first use, so importing this package
stays free of torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from matter_model.pretrained import load

        return load
    raise AttributeError(f"module 'matter_model' has no attribute {name!r}")
