"""configs/authors.yaml (the released network, a GPU config) and configs/authors-cpu.yaml."""

import torch

from matter_model.aspp import ASPP
from matter_model.checkpoint import build_model
from matter_model.loss import sample_positions, subpatch_info_nce
from matter_model.pamr import PAMR
from matter_model.train import CONFIG_DIR, build_optimizer, load_config

# The released network's 58,155,456 parameters (counted from their code) plus the projection
# of 64 codewords x 256 dims to the 128-d embedding: 64 * 128 * 256 + 128.
AUTHORS_PARAMETERS = 58_155_456 + 2_097_280


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_authors_config_is_the_released_network_and_optimiser():
    config = load_config(CONFIG_DIR / "authors.yaml")
    assert config["device"] == "cuda" and config["batch_size"] == 16
    assert (config["optimizer"], config["lr"], config["momentum"]) == ("sgd", 0.0085, 0.5)
    assert config["weight_decay"] == 1e-4
    model = build_model(config)
    assert n_parameters(model) == AUTHORS_PARAMETERS
    assert isinstance(model.tern, PAMR) and isinstance(model.aspp, ASPP)
    assert model.backbone.out_channels == 2048 and len(model.backbone.layers) == 33
    assert model.encoder.centres.shape == (64, 256)


def test_authors_model_takes_a_training_step_on_cpu():
    """One step as ``train`` takes it, at a tiny input (one triplet of 8 px crops, 3 px
    sub-patches): ResNet-101 at full resolution costs about 58 M multiply-adds a pixel."""
    config = load_config(CONFIG_DIR / "authors.yaml", device="cpu")
    torch.manual_seed(0)
    model = build_model(config).train()
    optimizer = build_optimizer(model.parameters(), config)
    crops = torch.randn(3, 9, 8, 8)  # anchor, positive, negative
    g = torch.Generator().manual_seed(0)
    positions, negatives = (sample_positions(1, 4, 8, 3, g) for _ in range(2))
    anchor, positive, negative = model(crops, window=3).chunk(3)
    loss = subpatch_info_nce(anchor, positive, negative, positions, negatives, 0.1, 3)
    before = model.fuse.conv.weight.detach().clone()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.fuse.conv.weight)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_authors_cpu_config_is_the_same_family_sized_down():
    authors = load_config(CONFIG_DIR / "authors.yaml")["model"]
    small = load_config(CONFIG_DIR / "authors-cpu.yaml")
    family = ("tern", "tern_iterations", "concat_input", "block", "aspp", "aspp_pool")
    assert {k: small["model"][k] for k in family} == {k: authors[k] for k in family}
    assert small["device"] == "cpu" and small["steps"] == 3500
    assert n_parameters(build_model(small)) == 99_480
