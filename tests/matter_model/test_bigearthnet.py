"""BigEarthNet: the reader (real sample and fixtures), the label nomenclatures, mAP, and the
linear-probe / fine-tuning task."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import Resampling
from sklearn.metrics import average_precision_score

from matter_model.bands import MATTER_BANDS
from matter_model.checkpoint import CheckpointError
from matter_model.datasets.bigearthnet import (
    LABELS_19,
    LABELS_43,
    NOMENCLATURE_19,
    BigEarthNet,
    BigEarthNetError,
    encode_labels,
    read_split,
)
from matter_model.downstream import bigearthnet as task
from matter_model.downstream.bigearthnet import mean_average_precision
from tests.conftest import REAL_DATA
from tests.matter_model.bigearthnet_fixtures import (
    PATCHES,
    make_dataset,
    make_patch,
    write_tiny_checkpoint,
)

REAL_ROOT = REAL_DATA / "bigearthnet" / "BigEarthNet-S2-Example"


@pytest.fixture
def real_root(real_data) -> Path:
    return real_data("bigearthnet", "BigEarthNet-S2-Example")


@pytest.fixture
def fixture_root(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ben")


# --- nomenclature ---------------------------------------------------------------------------


def test_nineteen_classes_merge_32_of_the_43_labels_once() -> None:
    merged = [label for labels in NOMENCLATURE_19.values() for label in labels]
    assert len(LABELS_19) == 19 and len(set(LABELS_43)) == 43
    assert len(merged) == len(set(merged)) == 32 and set(merged) <= set(LABELS_43)
    assert set(LABELS_43) - set(merged) == {
        "Road and rail networks and associated land",
        "Port areas",
        "Airports",
        "Mineral extraction sites",
        "Dump sites",
        "Construction sites",
        "Green urban areas",
        "Sport and leisure facilities",
        "Bare rock",
        "Burnt areas",
        "Intertidal flats",
    }


def test_encode_labels_in_both_nomenclatures() -> None:
    labels = ["Peatbogs", "Inland marshes", "Airports", "Sea and ocean"]
    t19 = encode_labels(labels, 19)
    assert [LABELS_19[i] for i in np.flatnonzero(t19)] == ["Inland wetlands", "Marine waters"]
    t43 = encode_labels(labels, 43)
    assert sorted(LABELS_43[i] for i in np.flatnonzero(t43)) == sorted(labels)
    with pytest.raises(BigEarthNetError, match=r"\['Parking lots'\] are not BigEarthNet"):
        encode_labels(["Pastures", "Parking lots"], 19, where="patch_x")


# --- reader on the real sample --------------------------------------------------------------


def test_real_patches_on_the_10m_grid(real_root: Path) -> None:
    ds = BigEarthNet(real_root)
    assert len(ds) == 6
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (9, 120, 120) and image.dtype == torch.float32
        assert float(image.min()) >= 0 and float(image.max()) < 2.0
        assert target.shape == (19,) and target.sum() >= 1
    patch = ds.patches[0]
    image = ds.read_image(patch)
    with rasterio.open(real_root / patch / f"{patch}_B04.tif") as src:
        np.testing.assert_allclose(image[MATTER_BANDS.index("B04")], src.read(1) * 1e-4, rtol=1e-6)
    with rasterio.open(real_root / patch / f"{patch}_B11.tif") as src:
        assert src.shape == (60, 60)
        bilinear = src.read(1, out_shape=(120, 120), resampling=Resampling.bilinear)
    np.testing.assert_allclose(image[MATTER_BANDS.index("B11")], bilinear * 1e-4, rtol=1e-6)


def test_real_labels_map_to_19_classes(real_root: Path) -> None:
    ds = BigEarthNet(real_root)
    patch = "S2B_MSIL2A_20170924T93020_69_24"
    assert ds.read_labels(patch) == [
        "Coniferous forest",
        "Mixed forest",
        "Transitional woodland/shrub",
        "Peatbogs",
        "Water bodies",
    ]
    target = ds.read_target(patch)
    assert [LABELS_19[i] for i in np.flatnonzero(target)] == [
        "Coniferous forest",
        "Mixed forest",
        "Transitional woodland, shrub",
        "Inland wetlands",
        "Inland waters",
    ]


def test_real_official_splits(real_root: Path) -> None:
    train = read_split(REAL_ROOT.parent / "train.csv.bz2")
    assert len(train) == 269695 and train[0] == "S2A_MSIL2A_20170717T113321_28_87"
    assert len(BigEarthNet(real_root, "train")) == 4
    assert BigEarthNet(real_root, "test").patches == ["S2A_MSIL2A_20170613T101031_87_48"]
    with pytest.raises(BigEarthNetError, match="from the 'val' split"):
        BigEarthNet(real_root, "val")


# --- reader on fixtures ----------------------------------------------------------------------


def test_fixture_splits_bands_and_nomenclature(fixture_root: Path) -> None:
    train = BigEarthNet(fixture_root, "train", bands=("B12", "B01", "B02"), nomenclature=43)
    assert train.patches == [n for n, (_, s) in PATCHES.items() if s == "train"]
    image, target = train[0]
    assert image.shape == (3, 120, 120)
    # B02 (native 10 m) is read as is; the 60 m B01 ramp is upsampled onto the same grid.
    with rasterio.open(fixture_root / train.patches[0] / f"{train.patches[0]}_B02.tif") as src:
        np.testing.assert_allclose(image[2].numpy(), src.read(1) * 1e-4, rtol=1e-6)
    assert np.all(np.diff(image[1].numpy()[:, 10:-10], axis=1) > 0)
    assert target.shape == (43,) and target.sum() == 2
    assert len(BigEarthNet(fixture_root, "val")) == 1 and len(BigEarthNet(fixture_root)) == 7


def test_missing_band_file_names_it(fixture_root: Path) -> None:
    name = "S2A_MSIL2A_20170613T101031_9_9"
    make_patch(fixture_root, name, ["Pastures"], bands=("B02", "B03", "B04"))
    ds = BigEarthNet(fixture_root, bands=("B02", "B05"))
    with pytest.raises(BigEarthNetError, match=rf"band B05 of patch '{name}' is missing: .*_B05"):
        ds[ds.patches.index(name)]


def test_patch_without_labels_metadata_names_it(fixture_root: Path) -> None:
    name = next(iter(PATCHES))
    (fixture_root / name / f"{name}_labels_metadata.json").unlink()
    ds = BigEarthNet(fixture_root)
    with pytest.raises(BigEarthNetError, match=rf"patch '{name}' has no labels metadata"):
        ds[0]


def test_bad_band_and_missing_split_are_clear(fixture_root: Path) -> None:
    with pytest.raises(BigEarthNetError, match=r"\['B10'\] are not in BigEarthNet-S2"):
        BigEarthNet(fixture_root, bands=("B02", "B10"))
    (fixture_root / "val.csv").unlink()
    with pytest.raises(BigEarthNetError, match="no split file for 'val'"):
        BigEarthNet(fixture_root, "val")


# --- mAP -------------------------------------------------------------------------------------


def test_micro_and_macro_map() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random((30, 5))
    targets = (rng.random((30, 5)) < 0.4).astype(np.float32)
    targets[:, 4] = 0  # a class without positives is left out of the macro mean
    result = mean_average_precision(scores, targets)
    per_class = [average_precision_score(targets[:, k], scores[:, k]) for k in range(4)]
    assert result["macro_map"] == pytest.approx(np.mean(per_class))
    assert np.isnan(result["per_class_ap"][4])
    assert result["micro_map"] == pytest.approx(
        average_precision_score(targets.ravel(), scores.ravel())
    )
    perfect = mean_average_precision(targets[:, :4] + 0.0, targets[:, :4])
    assert perfect["micro_map"] == perfect["macro_map"] == pytest.approx(1.0)


# --- the downstream task ---------------------------------------------------------------------


def _args(root: Path, checkpoint: Path | None, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    task.add_arguments(parser)
    args = parser.parse_args(["--root", str(root), "--workers", "0", "--batch-size", "4", *extra])
    args.checkpoint, args.device = checkpoint, "cpu"
    return args


def test_linear_probe_and_finetune_on_fixtures(fixture_root: Path, tmp_path: Path) -> None:
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pt")
    metrics = task.run(_args(fixture_root, checkpoint, "--epochs", "60", "--lr", "0.05"))
    assert metrics["train_patches"] == 4 and metrics["test_patches"] == 2
    assert metrics["bands"] == ["B02", "B03", "B04", "B08"] and metrics["window"] == 3
    assert metrics["loss_per_epoch"][-1] < metrics["loss_per_epoch"][0]
    assert 0 < metrics["micro_map"] <= 1 and 0 < metrics["macro_map"] <= 1
    assert set(metrics["per_class_ap"]) == {"Arable land", "Mixed forest", "Inland waters"}
    json.dumps(metrics, allow_nan=False)

    tuned = task.run(_args(fixture_root, checkpoint, "--mode", "finetune", "--epochs", "1"))
    assert tuned["mode"] == "finetune" and np.isfinite(tuned["loss_per_epoch"][0])
    assert 0 < tuned["micro_map"] <= 1


def test_linear_probe_on_the_real_sample(real_root: Path, tmp_path: Path) -> None:
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pt", bands=MATTER_BANDS)
    metrics = task.run(_args(real_root, checkpoint, "--epochs", "5"))
    assert metrics["train_patches"] == 4 and metrics["test_patches"] == 1
    assert 0 < metrics["micro_map"] <= 1
    # The single test patch has Arable land and Land principally occupied by agriculture.
    assert len(metrics["per_class_ap"]) == 2


def test_checkpoint_with_other_bands_is_refused(fixture_root: Path, tmp_path: Path) -> None:
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError, match=r"tiny\.pt takes 4 bands .* asks for 9"):
        task.run(_args(fixture_root, checkpoint, "--bands", ",".join(MATTER_BANDS)))
    other = write_tiny_checkpoint(tmp_path / "b10.pt", bands=("B02", "B10"))
    with pytest.raises(CheckpointError, match=r"b10\.pt takes bands .* has no \['B10'\]"):
        task.run(_args(fixture_root, other))


def test_command_line_writes_the_metrics(fixture_root: Path, tmp_path: Path) -> None:
    from matter_model.evaluate import evaluate

    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "metrics.json"
    argv = ["bigearthnet", "--root", str(fixture_root), "--checkpoint", str(checkpoint)]
    metrics = evaluate([*argv, "--out", str(out), "--epochs", "2", "--workers", "0"])
    assert json.loads(out.read_text()) == metrics
    assert metrics["model"] == f"checkpoint {checkpoint}" and metrics["test_patches"] == 2
