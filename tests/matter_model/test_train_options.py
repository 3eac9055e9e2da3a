"""Training options: the optimiser registry, and resuming checkpoints older than a config key."""

import copy

import pytest
import torch

from matter_model.train import OPTIMIZERS, _check_resumable, build_optimizer, load_config

NEW_MODEL_KEYS = (
    "block",
    "tern",
    "tern_iterations",
    "concat_input",
    "aspp",
    "aspp_channels",
    "aspp_pool",
)


def test_default_is_adam_as_before_and_sgd_takes_momentum():
    params = [torch.nn.Parameter(torch.zeros(3))]
    adam = build_optimizer(params, load_config())
    assert type(adam) is torch.optim.Adam and adam.defaults["lr"] == 0.001
    assert adam.defaults["weight_decay"] == 0.0
    sgd = build_optimizer(
        params, load_config(optimizer="sgd", lr=0.0085, momentum=0.5, weight_decay=1e-4)
    )
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (
        0.0085,
        0.5,
        1e-4,
    )
    assert set(OPTIMIZERS) == {"adam", "sgd"}
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(params, load_config(optimizer="lbfgs"))


def test_a_checkpoint_older_than_the_new_keys_still_resumes():
    config = load_config()
    old = copy.deepcopy(config)
    del old["optimizer"], old["momentum"]
    for key in NEW_MODEL_KEYS:
        del old["model"][key]
    _check_resumable({"config": old}, config, "old.pt")  # no error
    with pytest.raises(ValueError, match="trained with adam"):
        _check_resumable({"config": old}, load_config(optimizer="sgd"), "old.pt")
    with pytest.raises(ValueError, match="tern: pac there, pamr here"):
        _check_resumable({"config": old}, load_config(model={"tern": "pamr"}), "old.pt")
