"""The MATTER model and its registry."""

import hashlib

import pytest
import torch

from matter_model.aspp import ASPP
from matter_model.backbone import Backbone
from matter_model.bands import MATTER_BANDS
from matter_model.checkpoint import build_model
from matter_model.matter import MODELS, Matter, create_model
from matter_model.pamr import PAMR
from matter_model.train import CONFIG_DIR, load_config

TINY = dict(width=8, blocks=[1, 1], tern_layers=1, codewords=4, embed_dim=6)
AUTHORS_TINY = dict(
    TINY, tern="pamr", concat_input=True, block="bottleneck", aspp=True, aspp_channels=8
)
# (state-dict digest, entries, parameters) of the networks the configs built before the
# authors' variants existed: their checkpoints must keep loading.
EXISTING_MODELS = {
    "default.yaml": ("e0eb149d2d799db0", 115, 3_946_656),
    "demo.yaml": ("885c1fdd0622d469", 54, 33_720),
    "oscd.yaml": ("885c1fdd0622d469", 54, 33_720),
}


def test_registry_builds_the_model_with_the_authors_bands():
    model = create_model("matter", **TINY)
    assert isinstance(model, Matter) and "matter" in MODELS
    assert model.bands == MATTER_BANDS and model.in_channels == 9
    with pytest.raises(ValueError, match="unknown model"):
        create_model("nope")
    with pytest.raises(ValueError, match="unknown norm"):
        create_model("matter", norm="nope")


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_embed_is_dense_and_unit_length(norm):
    torch.manual_seed(0)
    model = create_model("matter", bands=["B04", "B08"], norm=norm, **TINY).eval()
    x = torch.rand(2, 2, 20, 17)
    with torch.no_grad():
        emb = model.embed(x, window=13)
    assert emb.shape == (2, 6, 20, 17)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2, 20, 17))
    with pytest.raises(ValueError, match="expects 2 bands"):
        model.embed(torch.rand(1, 3, 8, 8), window=7)


@pytest.mark.parametrize("config", sorted(EXISTING_MODELS))
def test_existing_configs_build_the_same_network(config):
    model = build_model(load_config(CONFIG_DIR / config))
    state = model.state_dict()
    names = "\n".join(f"{k} {tuple(v.shape)}" for k, v in state.items())
    digest = hashlib.sha256(names.encode()).hexdigest()[:16]
    count = sum(p.numel() for p in model.parameters())
    assert (digest, len(state), count) == EXISTING_MODELS[config]
    assert {k.split(".")[0] for k in state} == {"stem", "tern", "backbone", "encoder"}


def test_authors_variant_builds_pamr_bottleneck_and_aspp():
    torch.manual_seed(0)
    model = create_model("matter", **AUTHORS_TINY)
    assert isinstance(model.tern, PAMR) and not list(model.tern.parameters())
    assert isinstance(model.aspp, ASPP) and model.fuse.conv.in_channels == 8 + 9
    assert model.backbone.out_channels == 4 * 8 * 2  # bottleneck: 4 x the last stage's planes
    assert model.encoder.centres.shape == (4, 8)  # codewords of the ASPP's dims
    x = torch.rand(3, 9, 16, 12)
    assert model.features(x).shape == (3, 8, 16, 12)
    model.embed(x, 5).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.eval().surface_encoding(x, 5).shape == (3, 8, 16, 12)
    with pytest.raises(ValueError, match="unknown tern"):
        create_model("matter", tern="nope")
    with pytest.raises(ValueError, match="unknown block"):
        create_model("matter", block="nope")


def test_bottleneck_blocks_expand_four_times():
    backbone = Backbone(4, [2, 1], block="bottleneck")
    assert backbone.out_channels == 32
    assert [b.conv3.out_channels for b in backbone.layers] == [16, 16, 32]
    assert backbone(torch.rand(2, 4, 9, 9)).shape == (2, 32, 9, 9)


@pytest.mark.parametrize(("pool", "far_changes"), [(7, False), (None, True)])
def test_aspp_image_pooling_reaches_its_window_or_the_whole_input(pool, far_changes):
    torch.manual_seed(0)
    aspp = ASPP(3, 4, pool=pool).eval()
    x = torch.rand(1, 3, 48, 48)
    moved = x.clone()
    moved[..., :2, :2] += 5.0  # 38 px from (40, 40): beyond dilation 18 and a 7 px window
    with torch.no_grad():
        a, b = aspp(x), aspp(moved)
    assert a.shape == (1, 4, 48, 48)
    assert (a[..., 40, 40] != b[..., 40, 40]).any() == far_changes
    assert (a[..., 1, 1] != b[..., 1, 1]).any()
