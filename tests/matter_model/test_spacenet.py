"""SpaceNet: footprint masks, the building F1 scorer (against the challenge's published scores),
the chip reader, and the segmentation task."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from shapely.geometry import box

from matter_model.datasets.spacenet import (
    SpaceNetError,
    SpaceNetTiles,
    find_chips,
    footprint_mask,
    mask_to_polygons,
    match_buildings,
    read_footprints,
    read_solution_csv,
    score_solution_csv,
    to_pixel_polygons,
)
from matter_model.downstream import spacenet as task
from matter_model.downstream.encoder import adapt_input_bands
from matter_model.downstream.spacenet import split_tiles
from matter_model.matter import Matter
from matter_model.metrics import MatchCounts
from tests.matter_model.bigearthnet_fixtures import write_tiny_checkpoint
from tests.matter_model.spacenet_fixtures import AOI, BUILDINGS, make_aoi, planted_mask

# Per-image scores of SN2_sample_preds.csv against SN2_sample_truth.csv as the SpaceNet scorer
# (solaris, ``spacenet_buildings_2``) computes them: solaris' test reference
# ``SN2_test_results_full.csv`` (TruePos, FalsePos, FalseNeg, F1Score).
SOLARIS_SN2 = {
    "AOI_5_Khartoum_img130": (22, 13, 32, 0.4943820224719101),
    "AOI_2_Vegas_img3457": (28, 2, 6, 0.8749999999999999),
    "AOI_2_Vegas_img5979": (7, 0, 1, 0.9333333333333333),
    "AOI_5_Khartoum_img1301": (17, 15, 23, 0.47222222222222215),
    "AOI_5_Khartoum_img1306": (13, 27, 20, 0.35616438356164376),
    "AOI_5_Khartoum_img463": (0, 0, 0, 0.0),
}


@pytest.fixture
def aoi(tmp_path: Path) -> Path:
    return make_aoi(tmp_path / AOI)


# --- the scorer ------------------------------------------------------------------------------


def test_scorer_reproduces_the_spacenet2_sample_scores(real_data) -> None:
    root = real_data("spacenet")
    scores = score_solution_csv(root / "SN2_sample_truth.csv", root / "SN2_sample_preds.csv")
    assert set(scores) == set(SOLARIS_SN2)
    for image, (tp, fp, fn, f1) in SOLARIS_SN2.items():
        assert (scores[image].tp, scores[image].fp, scores[image].fn) == (tp, fp, fn), image
        assert scores[image].f1 == pytest.approx(f1)


def test_matching_is_one_to_one_strictly_above_half_and_by_confidence() -> None:
    truth = [box(0, 0, 10, 10)]
    # Two proposals on one building: one match, one false positive; the confident one wins.
    loose, tight = box(0, 0, 10, 12), box(0, 0, 10, 11)
    assert match_buildings(truth, [loose, tight], [0.9, 0.1]) == MatchCounts(1, 1, 0)
    # IoU exactly 0.5 is not a match (strictly greater, as SpaceNet scores).
    half = box(0, 0, 10, 20)
    assert match_buildings(truth, [half]) == MatchCounts(0, 1, 1)
    # Truth under 20 px^2 and proposals of 20 px^2 or less are ignored.
    assert match_buildings([box(0, 0, 4, 4)], [box(0, 0, 4, 5)]) == MatchCounts(0, 0, 0)
    counts = MatchCounts(3, 1, 2) + MatchCounts(1, 0, 0)
    assert counts.as_dict()["f1"] == pytest.approx(2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6))


def test_solution_csv_without_polygon_column_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageId,BuildingId,Geometry\nimg1,1,POLYGON EMPTY\n")
    with pytest.raises(SpaceNetError, match=r"bad\.csv: columns .* lack"):
        read_solution_csv(bad)


# --- masks on the real chip ------------------------------------------------------------------


def test_real_chip_mask_matches_its_footprints(real_data) -> None:
    root = real_data("spacenet")
    with rasterio.open(root / "sample_geotiff.tif") as ds:
        crs, transform, shape = ds.crs, ds.transform, ds.shape
    geometries = read_footprints(root / "geotiff_labels.geojson", crs)
    assert len(geometries) == 43
    mask = footprint_mask(geometries, transform, shape)
    truth = to_pixel_polygons(geometries, transform)
    # Pixel-centre rasterisation keeps each footprint's area to within its boundary pixels.
    area = sum(p.area for p in truth)
    assert abs(mask.sum() - area) < 0.01 * area
    # Vectorising the mask again finds every building at IoU > 0.5.
    assert match_buildings(truth, mask_to_polygons(mask)) == MatchCounts(43, 0, 0)


# --- the reader on fixtures ------------------------------------------------------------------


def test_fixture_chips_pair_and_rasterise_from_epsg4326(aoi: Path) -> None:
    chips = find_chips(aoi / "PAN", aoi / "geojson" / "buildings")
    assert [c.chip_id for c in chips] == [f"{AOI}_img{i}" for i in BUILDINGS]
    dataset = SpaceNetTiles(chips)
    assert len(dataset) == 4 and dataset.band_count == 1
    for i, index in enumerate(BUILDINGS):
        image, mask, _ = dataset[i]
        assert image.shape == (1, 64, 64) and image.dtype == torch.float32
        assert abs(float(image.mean())) < 1e-4
        np.testing.assert_array_equal(mask.numpy() > 0, planted_mask(index))


def test_tiles_cover_the_chip_and_clip_the_truth(aoi: Path) -> None:
    dataset = SpaceNetTiles(find_chips(aoi / "PAN", aoi / "geojson" / "buildings"), tile=40)
    # 64 px in 40 px tiles: starts 0 and 24 (the last flush with the edge), 4 tiles per chip.
    assert len(dataset) == 16 and dataset.window(1) == (0, 24, 40, 40)
    image, mask, _ = dataset[3]
    assert image.shape == (1, 40, 40)
    np.testing.assert_array_equal(mask.numpy() > 0, planted_mask(1)[24:, 24:])
    polygons = dataset.truth_polygons(3)
    assert len(polygons) == 1
    np.testing.assert_allclose(polygons[0].bounds, (16, 6, 32, 22), atol=1e-6)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_label_less_and_ungeoreferenced_chips_are_refused(aoi: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpaceNetError, match=r"no chip of .* has a label file"):
        find_chips(aoi / "PAN", tmp_path / "empty")
    with pytest.raises(SpaceNetError, match="does not exist"):
        find_chips(aoi / "MUL", aoi / "geojson" / "buildings")
    bare = tmp_path / "PAN_bare.tif"
    with rasterio.open(bare, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as ds:
        ds.write(np.ones((1, 8, 8), dtype=np.uint8))
    chips = find_chips(bare, aoi / "geojson" / "buildings" / f"buildings_{AOI}_img1.geojson")
    with pytest.raises(SpaceNetError, match=r"PAN_bare\.tif has no georeference"):
        SpaceNetTiles(chips)[0]


# --- the task --------------------------------------------------------------------------------


def test_split_holds_out_chips_or_tiles_of_one_chip(aoi: Path) -> None:
    chips = find_chips(aoi / "PAN", aoi / "geojson" / "buildings")
    train, test = split_tiles(SpaceNetTiles(chips, tile=32), 0.25)
    assert test == [12, 13, 14, 15] and train == list(range(12))
    train, test = split_tiles(SpaceNetTiles(chips[:1], tile=32), 0.25)
    assert train == [0, 1, 2] and test == [3]


def test_first_layer_adapted_to_one_band_keeps_the_response_to_flat_bands() -> None:
    torch.manual_seed(0)
    model = Matter(width=8, blocks=(1,), tern_layers=1, codewords=4, embed_dim=8).eval()
    grey = torch.rand(1, 1, 16, 16)
    before = model.stem[0](grey.expand(-1, 9, -1, -1))
    adapt_input_bands(model, ("pan",))
    assert model.in_channels == 1 and model.stem[0].weight.shape[1] == 1
    torch.testing.assert_close(model.stem[0](grey), before)
    assert model.embed(grey, 3).shape == (1, 8, 16, 16)


def test_authors_variant_adapts_its_input_concatenation_too() -> None:
    torch.manual_seed(0)
    model = Matter(
        width=8, blocks=(1,), codewords=4, embed_dim=8, tern="pamr", concat_input=True
    ).eval()
    grey = torch.rand(1, 1, 16, 16)
    features = torch.rand(1, 8, 16, 16)
    before = model.fuse.conv(torch.cat([features, grey.expand(-1, 9, -1, -1)], 1))
    adapt_input_bands(model, ("pan",))
    assert model.fuse.conv.in_channels == 8 + 1
    torch.testing.assert_close(model.fuse.conv(torch.cat([features, grey], 1)), before)
    assert model.embed(grey, 3).shape == (1, 8, 16, 16)


def _args(root: Path, checkpoint: Path | None, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    task.add_arguments(parser)
    args = parser.parse_args(["--root", str(root), "--workers", "0", *extra])
    args.checkpoint, args.device = checkpoint, "cpu"
    return args


def test_segmentation_runs_on_fixture_chips(aoi: Path, tmp_path: Path) -> None:
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pt")
    metrics = task.run(
        _args(
            aoi, checkpoint, "--mode", "finetune", "--epochs", "3", "--scale", "2", "--lr", "0.01"
        )
    )
    assert metrics["chips"] == 4 and metrics["train_tiles"] == 3 and metrics["test_tiles"] == 1
    assert metrics["pretrained_bands"] == ["B02", "B03", "B04", "B08"]
    assert metrics["chip_bands"] == 1
    assert metrics["loss_per_epoch"][-1] < metrics["loss_per_epoch"][0]
    assert 0 <= metrics["pixel_iou"] <= 1
    building = metrics["building"]
    assert building["tp"] + building["fn"] == len(BUILDINGS[4])
    json.dumps(metrics, allow_nan=False)


def test_segmentation_runs_on_the_real_chip(real_data, tmp_path: Path) -> None:
    root = real_data("spacenet")
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pt")
    metrics = task.run(
        _args(
            root,
            checkpoint,
            *("--images", "sample_geotiff.tif", "--labels", "geotiff_labels.geojson"),
            *("--tile", "300", "--scale", "6", "--epochs", "1", "--batch-size", "3"),
        )
    )
    assert metrics["train_tiles"] == 6 and metrics["test_tiles"] == 3
    # Truth footprints cut to the three bottom tiles (fragments under 20 px^2 ignored).
    assert metrics["building"]["tp"] + metrics["building"]["fn"] == 12
    assert metrics["pixel_iou"] is None or 0 <= metrics["pixel_iou"] <= 1
