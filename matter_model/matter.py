"""The MATTER model (stem, TeRN, ResNet backbone, Surface Residual Encoder) and its registry."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from matter_model.backbone import NORMS, Backbone, Stem
from matter_model.residual_encoder import ResidualEncoder
from matter_model.tern import TeRN

DEFAULT_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12")


class Matter(nn.Module):
    """Dense material/texture embeddings of multispectral images.

    ``bands`` names the input channels in order (``in_channels = len(bands)``). The stem and TeRN
    work at ``width`` channels; the backbone has ``len(blocks)`` stages; the residual encoder has
    ``codewords`` cluster centres and ``embed_dim`` output dims.
    """

    def __init__(
        self,
        bands: list[str] | tuple[str, ...] = DEFAULT_BANDS,
        width: int = 64,
        blocks: list[int] | tuple[int, ...] = (2, 2, 2),
        tern_layers: int = 3,
        tern_kernel: int = 3,
        tern_eps: float = 0.1,
        codewords: int = 32,
        embed_dim: int = 128,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {sorted(NORMS)}")
        self.bands = tuple(bands)
        self.in_channels = len(self.bands)
        norm_layer = NORMS[norm]
        self.stem = Stem(self.in_channels, width, norm_layer)
        self.tern = TeRN(width, tern_layers, tern_kernel, tern_eps, norm_layer)
        self.backbone = Backbone(width, list(blocks), norm_layer)
        self.encoder = ResidualEncoder(self.backbone.out_channels, codewords, embed_dim)
        self.embed_dim = embed_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel backbone features (B, D, H, W) before the residual encoder."""
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"the model expects {self.in_channels} bands {list(self.bands)}, got {x.shape[1]}"
            )
        return self.backbone(self.tern(self.stem(x)))

    def embed(self, x: torch.Tensor, window: int) -> torch.Tensor:
        """L2-normalised embeddings (B, E, H, W) of the ``window`` px window around each pixel."""
        return F.normalize(self.encoder(self.features(x), window).float(), dim=1)

    def surface_residuals(self, x: torch.Tensor, window: int) -> torch.Tensor:
        """Un-normalised surface residuals (B, D, H, W) of the ``window`` px window around each
        pixel (:meth:`ResidualEncoder.residuals`): what unsupervised change maps compare."""
        return self.encoder.residuals(self.features(x), window).float()

    def surface_encoding(self, x: torch.Tensor, window: int) -> torch.Tensor:
        """The authors' surface encoding (B, D, H, W) of the ``window`` px window around each
        pixel (:meth:`ResidualEncoder.surface_encoding`): the vector their released encoder
        outputs and their change maps compare."""
        return self.encoder.surface_encoding(self.features(x), window).float()

    def forward(self, x: torch.Tensor, window: int) -> torch.Tensor:
        return self.embed(x, window)


MODELS: dict[str, Callable[..., nn.Module]] = {"matter": Matter}


def create_model(name: str, **kwargs) -> Matter:
    """Build the registered model ``name`` with ``kwargs`` (e.g. ``bands``, ``width``)."""
    try:
        constructor = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(MODELS)}") from None
    return constructor(**kwargs)
