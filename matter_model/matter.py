"""The MATTER model (stem, TeRN, ResNet backbone, Surface Residual Encoder) and its registry.

The defaults build this project's network: a learned pixel-adaptive TeRN (``tern: pac``) and
basic residual blocks. ``tern: pamr`` with ``concat_input``, ``block: bottleneck`` and ``aspp``
build the authors' released one (``configs/authors.yaml``): a weightless PAMR refinement driven by
the image, the refined features concatenated with the raw bands, a bottleneck ResNet and ASPP.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from matter_model.aspp import ASPP
from matter_model.backbone import NORMS, Backbone, InputConcat, Stem
from matter_model.bands import MATTER_BANDS
from matter_model.pamr import PAMR
from matter_model.residual_encoder import ResidualEncoder
from matter_model.tern import TeRN

# Texture refinement networks by name, built from the model's TeRN settings; each module's
# ``forward(features, image)`` returns refined features of the same shape.
TERNS: dict[str, Callable[..., nn.Module]] = {
    "pac": lambda width, layers, kernel, eps, norm, **_: TeRN(width, layers, kernel, eps, norm),
    "pamr": lambda iterations, **_: PAMR(iterations),
}


class Matter(nn.Module):
    """Dense material/texture embeddings of multispectral images.

    ``bands`` names the input channels in order (``in_channels = len(bands)``). The stem and TeRN
    work at ``width`` channels; ``tern`` (a key of ``TERNS``) is ``pac`` (``tern_layers`` learned
    layers of ``tern_kernel`` px) or ``pamr`` (``tern_iterations`` weightless rounds driven by
    the image); ``concat_input`` adds the raw bands to the TeRN output through one 3x3
    convolution; the backbone has ``len(blocks)`` stages of ``block`` blocks (``basic`` or
    ``bottleneck``); ``aspp`` adds ASPP of ``aspp_channels`` (image pooling over ``aspp_pool``
    px, or the whole input with ``None``); the residual encoder has ``codewords`` cluster centres
    and ``embed_dim`` output dims. The defaults add no module and no parameter to the network
    that configs without these keys describe, so their checkpoints load unchanged.
    """

    def __init__(
        self,
        bands: list[str] | tuple[str, ...] = MATTER_BANDS,
        width: int = 64,
        blocks: list[int] | tuple[int, ...] = (2, 2, 2),
        tern_layers: int = 3,
        tern_kernel: int = 3,
        tern_eps: float = 0.1,
        codewords: int = 32,
        embed_dim: int = 128,
        norm: str = "batch",
        tern: str = "pac",
        tern_iterations: int = 10,
        concat_input: bool = False,
        block: str = "basic",
        aspp: bool = False,
        aspp_channels: int = 256,
        aspp_pool: int | None = 7,
    ) -> None:
        super().__init__()
        _check_choice("norm", norm, NORMS)
        _check_choice("tern", tern, TERNS)
        self.bands = tuple(bands)
        self.in_channels = len(self.bands)
        norm_layer = NORMS[norm]
        self.stem = Stem(self.in_channels, width, norm_layer)
        self.tern = TERNS[tern](
            width=width,
            layers=tern_layers,
            kernel=tern_kernel,
            eps=tern_eps,
            norm=norm_layer,
            iterations=tern_iterations,
        )
        self.fuse = InputConcat(width, self.in_channels, norm_layer) if concat_input else None
        self.backbone = Backbone(width, list(blocks), norm_layer, block)
        dim = aspp_channels if aspp else self.backbone.out_channels
        self.aspp = (
            ASPP(self.backbone.out_channels, dim, norm_layer, pool=aspp_pool)
            if aspp
            else nn.Identity()
        )
        self.encoder = ResidualEncoder(dim, codewords, embed_dim)
        self.embed_dim = embed_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel backbone features (B, D, H, W) before the residual encoder."""
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"the model expects {self.in_channels} bands {list(self.bands)}, got {x.shape[1]}"
            )
        refined = self.tern(self.stem(x), x)
        if self.fuse is not None:
            refined = self.fuse(refined, x)
        return self.aspp(self.backbone(refined))

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


def _check_choice(what: str, name: str, registry: dict[str, object]) -> None:
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(registry)}")


MODELS: dict[str, Callable[..., nn.Module]] = {"matter": Matter}


def create_model(name: str, **kwargs) -> Matter:
    """Build the registered model ``name`` with ``kwargs`` (e.g. ``bands``, ``width``)."""
    try:
        constructor = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(MODELS)}") from None
    return constructor(**kwargs)
