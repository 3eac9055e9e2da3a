"""OSCD fine-tuned change detection over several seeds, on the tiny three-city release
(``oscd_fixtures.py``): the per-seed report and its mean / std, the same head initialisation and
crops for both encoders of a seed, and seeds that do not depend on one another."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from matter_model.downstream import oscd_finetune
from matter_model.evaluate import evaluate

ENCODERS = ("matter", "random_init")
METRICS = ("precision", "recall", "f1")


@contextlib.contextmanager
def _logged() -> Iterator[list[str]]:
    """The messages the matter_model loggers emit at INFO and above meanwhile."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("matter_model"), Collect()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _finetune(release: Path, checkpoint: Path, out: Path, seeds: str) -> dict[str, Any]:
    """Run the CLI with a few steps on small crops; the JSON it wrote and what it logged."""
    argv = ["oscd-finetune", "--root", str(release), "--checkpoint", str(checkpoint)]
    argv += ["--out", str(out), "--window", "5", "--steps", "3", "--crop", "24"]
    argv += ["--batch-size", "2", "--seeds", seeds]
    with _logged() as logged:
        evaluate(argv)
    return {"json": json.loads(out.read_text()), "logged": logged}


@pytest.fixture(scope="module")
def two_seeds(release: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Seeds 0 and 1, recording what each training starts from: the head's and the encoder's
    weights, and every crop batch drawn."""
    seen: list[dict[str, Any]] = []
    train, crops = oscd_finetune.train_siamese, oscd_finetune._random_crops

    def recording_train(net: oscd_finetune.SiameseChangeNet, *args: Any, **kw: Any) -> Any:
        head = {k: v.detach().clone() for k, v in net.head.state_dict().items()}
        encoder = {k: v.detach().clone() for k, v in net.encoder.state_dict().items()}
        seen.append({"head": head, "encoder": encoder, "crops": []})
        return train(net, *args, **kw)

    def recording_crops(*args: Any, **kw: Any) -> tuple[torch.Tensor, ...]:
        drawn = crops(*args, **kw)
        seen[-1]["crops"].append(drawn)
        return drawn

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(oscd_finetune, "train_siamese", recording_train)
        patch.setattr(oscd_finetune, "_random_crops", recording_crops)
        out = tmp_path_factory.mktemp("two") / "f.json"
        return {**_finetune(release, checkpoint, out, "0,1"), "seen": seen}


def test_per_seed_figures_and_their_mean_and_std(two_seeds: dict) -> None:
    tuned = two_seeds["json"]
    assert tuned["seeds"] == [0, 1] and sorted(tuned["per_seed"]) == ["0", "1"]
    assert tuned["train_cities"] == ["alpha", "gamma"] and tuned["test_cities"] == ["beta"]
    for report in tuned["per_seed"].values():
        for name in ENCODERS:
            beta = report[name]["per_city"]["beta"]
            assert beta["tp"] + beta["fn"] == 168  # every planted change pixel, once
            assert 0.0 < report[name]["threshold"] < 1.0
            assert np.isfinite(report[name]["final_loss"])
        for m in METRICS:
            expected = report["matter"]["micro"][m] - report["random_init"]["micro"][m]
            assert report["difference"][m] == pytest.approx(expected)
    for entry in (*ENCODERS, "difference"):
        for m in METRICS:
            values = [
                r[entry]["micro"][m] if entry in ENCODERS else r[entry][m]
                for r in tuned["per_seed"].values()
            ]
            assert tuned["mean"][entry][m] == pytest.approx(np.mean(values))
            assert tuned["std"][entry][m] == pytest.approx(np.std(values, ddof=1))
    # The top-level entries keep a single-seed run's shape: the first seed's.
    assert all(tuned[name] == tuned["per_seed"]["0"][name] for name in ENCODERS)
    summary = [ln.split() for ln in two_seeds["logged"] if ln.startswith("  ") and "±" in ln]
    assert [line[0] for line in summary] == [*ENCODERS, "difference"]
    f1 = tuned["mean"]["matter"]["f1"], tuned["std"]["matter"]["f1"]
    assert summary[0][-4:] == ["F1", f"{f1[0]:.4f}", "±", f"{f1[1]:.4f}"]


def test_a_seed_does_not_depend_on_the_other_seeds(
    two_seeds: dict, release: Path, checkpoint: Path, tmp_path: Path
) -> None:
    alone = _finetune(release, checkpoint, tmp_path / "alone.json", "1")["json"]
    assert alone["per_seed"]["1"] == two_seeds["json"]["per_seed"]["1"]
    assert alone["mean"]["matter"]["f1"] == alone["per_seed"]["1"]["matter"]["micro"]["f1"]
    assert all(v is None for v in alone["std"]["matter"].values())  # one seed: no spread


def test_both_encoders_of_a_seed_get_the_same_head_and_crops(two_seeds: dict) -> None:
    seen = two_seeds["seen"]
    assert len(seen) == 4  # seed 0: matter, random_init; seed 1: matter, random_init
    (m0, r0, m1, r1) = seen
    for matter, random_init in ((m0, r0), (m1, r1)):
        _assert_same(matter["head"], random_init["head"])
        assert len(matter["crops"]) == 3  # one batch a step
        for a, b in zip(matter["crops"], random_init["crops"], strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert not _equal(matter["encoder"], random_init["encoder"])
    assert not _equal(m0["head"], m1["head"])  # seeds differ
    assert not torch.equal(m0["crops"][0][0], m1["crops"][0][0])
    _assert_same(m0["encoder"], m1["encoder"])  # a fresh copy of the checkpoint each seed
    assert not _equal(r0["encoder"], r1["encoder"])  # a random encoder drawn from each seed


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert _equal(a, b), [k for k in a if not torch.equal(a[k], b.get(k, torch.empty(0)))]


def test_seeds_option_and_its_default() -> None:
    parser = argparse.ArgumentParser()
    oscd_finetune.add_arguments(parser)
    args = parser.parse_args(["--root", "r"])
    assert oscd_finetune.seeds_of(args) == [0, 1, 2]
    assert oscd_finetune.seeds_of(parser.parse_args(["--root", "r", "--seed", "5"])) == [5, 6, 7]
    assert oscd_finetune.seeds_of(parser.parse_args(["--root", "r", "--seeds", "4, 2"])) == [4, 2]
    assert args.steps == oscd_finetune.DEFAULT_STEPS
    for bad in ("1,1", "a", ","):
        with pytest.raises(SystemExit):
            parser.parse_args(["--root", "r", "--seeds", bad])
