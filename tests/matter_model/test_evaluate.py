"""The evaluation command line: task registry, checkpoint resolution, OSCD metrics (unsupervised
and fine-tuned) on a tiny release in the official layout (``oscd_fixtures.py``), bad input, and a
real OSCD city."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from matter_model.datasets.oscd import OSCD
from matter_model.downstream.oscd_finetune import best_f1_threshold, default_split
from matter_model.evaluate import (
    TASKS,
    EvaluationError,
    evaluate,
    load_task,
    main,
    resolve_checkpoint,
)
from tests.conftest import REAL_DATA
from tests.matter_model.oscd_fixtures import make_city, make_release
from tests.matter_model.tiny_model import tiny_checkpoint

REAL_ROOT = REAL_DATA / "oscd"


def test_registry_names_every_task_and_loads_oscd() -> None:
    assert {"oscd", "oscd-finetune", "bigearthnet", "spacenet"} <= set(TASKS)
    module = load_task("oscd")
    assert callable(module.add_arguments) and callable(module.run)
    with pytest.raises(EvaluationError, match=r"unknown task 'nope'.*oscd"):
        load_task("nope")


def test_registered_task_without_its_module_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(TASKS, "ghost", "matter_model.downstream.ghost")
    with pytest.raises(EvaluationError, match=r"'ghost' is registered.*downstream\.ghost"):
        load_task("ghost")


def test_checkpoint_resolution_prefers_the_first_local_one(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="matter_model.evaluate")
    candidates = (("real/checkpoint.pt", "real pretraining"), ("demo/checkpoint.pt", "demo"))
    with pytest.raises(EvaluationError, match=r"no local checkpoint.*make oscd-pretrain"):
        resolve_checkpoint(None, candidates=candidates, root=tmp_path)
    tiny_checkpoint(tmp_path / "demo" / "checkpoint.pt")
    found = resolve_checkpoint(None, candidates, tmp_path)
    assert found == tmp_path / "demo" / "checkpoint.pt" and "from demo" in caplog.messages[0]
    tiny_checkpoint(tmp_path / "real" / "checkpoint.pt")
    assert resolve_checkpoint(None, candidates, tmp_path).parent.name == "real"
    with pytest.raises(EvaluationError, match="--checkpoint .*missing.pt does not exist"):
        resolve_checkpoint(tmp_path / "missing.pt")


def _argv(task: str, root: Path, checkpoint: Path, out: Path) -> list[str]:
    return [task, "--root", str(root), "--checkpoint", str(checkpoint), "--out", str(out)]


def test_oscd_unsupervised_metrics(release: Path, checkpoint: Path, tmp_path: Path) -> None:
    out, maps = tmp_path / "metrics.json", tmp_path / "maps"
    argv = [*_argv("oscd", release, checkpoint, out), "--window", "5", "--maps", str(maps)]
    returned = evaluate(argv)
    metrics = json.loads(out.read_text())
    assert metrics == json.loads(json.dumps(returned))
    labelled = ["alpha", "beta", "gamma"]
    assert metrics["cities"] == labelled
    assert metrics["features"] == "residual"  # the default: un-normalised surface residuals
    for method in ("matter", "cva", "untrained"):
        assert sorted(metrics[method]["per_city"]) == labelled
        for scores in [metrics[method]["micro"], *metrics[method]["per_city"].values()]:
            assert all(0.0 <= scores[k] <= 1.0 for k in ("precision", "recall", "f1"))
        assert all(np.isfinite(c["threshold"]) for c in metrics[method]["per_city"].values())
        total = sum(c["tp"] + c["fn"] for c in metrics[method]["per_city"].values())
        assert total == 3 * 12 * 14  # every planted change pixel is counted once
        macro = metrics[method]["macro"]
        cities = metrics[method]["per_city"].values()
        assert macro["auc"] == pytest.approx(np.mean([c["auc"] for c in cities]))
        assert 0.0 <= macro["average_precision"] <= 1.0
    # The planted change is bright in every band: CVA with Otsu finds it, and ranks it first.
    assert metrics["cva"]["micro"]["f1"] > 0.8 and metrics["cva"]["macro"]["auc"] > 0.95
    assert sorted(p.name for p in maps.iterdir()) == [f"{c}.png" for c in labelled]


def test_oscd_finetune_metrics(release: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    argv = [*_argv("oscd-finetune", release, checkpoint, out), "--window", "5", "--steps", "4"]
    evaluate([*argv, "--crop", "24", "--batch-size", "2", "--seeds", "0"])
    tuned = json.loads(out.read_text())
    assert tuned["train_cities"] == ["alpha", "gamma"] and tuned["test_cities"] == ["beta"]
    for name in ("matter", "random_init"):
        assert sorted(tuned[name]["per_city"]) == ["beta"]
        assert tuned[name]["per_city"]["beta"]["tp"] + tuned[name]["per_city"]["beta"]["fn"] == 168
        assert 0.0 <= tuned[name]["micro"]["f1"] <= 1.0 and np.isfinite(tuned[name]["final_loss"])
        assert 0.0 < tuned[name]["threshold"] < 1.0


def test_finetune_rejects_overlapping_cities(release: Path, checkpoint: Path, capsys) -> None:
    argv = _argv("oscd-finetune", release, checkpoint, release / "m.json")
    err = _fails([*argv, "--train-cities", "alpha,beta", "--test-cities", "beta"], capsys)
    assert "disjoint" in err and "'beta'" in err


def test_default_split_uses_labelled_official_test_cities(tmp_path: Path) -> None:
    make_release(tmp_path)
    assert default_split(OSCD(tmp_path), ["alpha", "beta", "gamma"]) == (
        ["alpha", "gamma"],
        ["beta"],
    )
    make_city(tmp_path, "delta", (40, 48), split="test")
    labelled = OSCD(tmp_path).labelled_cities()
    assert default_split(OSCD(tmp_path), labelled) == (["alpha", "beta", "gamma"], ["delta"])


def test_best_f1_threshold_separates_two_populations() -> None:
    probability = np.array([[0.1, 0.2, 0.35, 0.7, 0.9]])
    label = np.array([[False, False, False, True, True]])
    threshold = best_f1_threshold([probability], [label], [np.ones_like(label)])
    assert 0.35 <= threshold < 0.7


def _fails(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    return capsys.readouterr().err


def test_checkpoint_with_another_band_count_names_file_and_counts(
    release: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    argv = _argv("oscd", release, checkpoint, tmp_path / "m.json")
    err = _fails([*argv, "--bands", "B02,B03,B04"], capsys)
    assert str(checkpoint) in err and "9 bands" in err and "asks for 3" in err
    assert not (tmp_path / "m.json").exists()


def test_city_without_labels_is_named(release: Path, checkpoint: Path, tmp_path: Path, capsys):
    argv = _argv("oscd", release, checkpoint, tmp_path / "m.json")
    err = _fails([*argv, "--cities", "alpha,nolabel"], capsys)
    assert "['nolabel'] have no change label" in err


def test_missing_band_file_is_named(checkpoint: Path, tmp_path: Path, capsys) -> None:
    make_city(tmp_path, "town", (40, 48), missing="B11")
    err = _fails(_argv("oscd", tmp_path, checkpoint, tmp_path / "m.json"), capsys)
    assert "band B11" in err and "imgs_2" in err


def test_shapes_too_different_are_an_error(checkpoint: Path, tmp_path: Path, capsys) -> None:
    make_city(tmp_path, "town", (40, 48), label_shape=(40, 60))
    err = _fails(_argv("oscd", tmp_path, checkpoint, tmp_path / "m.json"), capsys)
    assert "town-cm.tif" in err and "(40, 60)" in err and "(40, 48)" in err


def test_no_task_or_unknown_task(capsys) -> None:
    assert "name a task first" in _fails([], capsys)
    assert "unknown task 'nope'" in _fails(["nope", "--out", "m.json"], capsys)


@pytest.mark.skipif(
    not REAL_ROOT.is_dir(), reason=f"real OSCD data not found at {REAL_ROOT} (set MATTER_REAL_DATA)"
)
def test_real_city_through_the_command_line(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    evaluate([*_argv("oscd", REAL_ROOT, checkpoint, out), "--cities", "bercy"])
    metrics = json.loads(out.read_text())
    for method in ("matter", "cva", "untrained"):
        bercy = metrics[method]["per_city"]["bercy"]
        assert bercy["tp"] + bercy["fn"] > 0 and 0.0 <= bercy["f1"] <= 1.0
        assert metrics[method]["micro"]["f1"] == bercy["f1"]
    assert metrics["cva"]["micro"]["f1"] > 0.05  # chance level is bercy's change fraction
