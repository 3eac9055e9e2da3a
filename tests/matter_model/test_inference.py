"""Tiled, blended inference: the whole-image result, in memory bounded by a tile."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy import ndimage

from matter_model.change_detection import (
    ChangePair,
    detect_changes,
    model_features,
    otsu_threshold,
)
from matter_model.checkpoint import load_model
from matter_model.inference import (
    change_mask,
    change_score,
    date_preparation,
    embed_dates,
    fill_from_nearest_date,
    spans,
    tiled_apply,
    tiled_inference,
)
from matter_model.inputs import SCENE_STANDARDISED, input_preparation, standardise
from tests.matter_model.tiny_model import tiny_checkpoint


def box_filter(x: np.ndarray, size: int = 9) -> np.ndarray:
    """A model whose receptive field is ``size`` px: a box filter over the last two axes."""
    return ndimage.uniform_filter(x, size=(1,) * (x.ndim - 2) + (size, size), mode="reflect")


@pytest.mark.parametrize("ramp", ["cosine", "linear"])
@pytest.mark.parametrize("size", [5, 64, 130, 517, 520])
@pytest.mark.parametrize(("tile", "overlap"), [(64, 16), (64, 0), (64, 64), (100, 33)])
def test_blending_weights_sum_to_one(ramp: str, size: int, tile: int, overlap: int) -> None:
    total = np.zeros(size)
    for span in spans(size, tile, overlap, ramp):
        total[span.support[0] : span.support[1]] += span.weights
        assert span.window[0] <= span.support[0] and span.support[1] <= span.window[1]
    np.testing.assert_allclose(total, 1.0)


def test_bad_tiling_is_refused() -> None:
    with pytest.raises(ValueError, match="ramp"):
        spans(100, 32, 8, "gaussian")
    with pytest.raises(ValueError, match="overlap"):
        spans(100, 32, 40)


@pytest.mark.parametrize(("tile", "overlap"), [(64, 16), (100, 20), (48, 48)])
def test_tiled_equals_whole_image_when_context_covers_the_receptive_field(
    tile: int, overlap: int
) -> None:
    image = np.random.default_rng(0).normal(size=(2, 3, 300, 257)).astype(np.float32)
    np.testing.assert_allclose(
        tiled_apply(image, box_filter, tile, overlap), box_filter(image), atol=1e-5
    )


def test_blending_hides_the_seams_of_a_short_context() -> None:
    """With context under the receptive field tiles disagree at their edges: blending spreads
    the difference over the overlap instead of leaving a step at the seam."""
    image = np.random.default_rng(1).normal(size=(1, 256, 256)).astype(np.float32)
    whole = box_filter(image, 25)
    hard = np.abs(tiled_apply(image, lambda x: box_filter(x, 25), 64, 0) - whole).max()
    blended = np.abs(tiled_apply(image, lambda x: box_filter(x, 25), 64, 16) - whole).max()
    assert blended < hard / 2


def test_the_model_sees_one_tile_plus_context_at_a_time_and_each_pixel_is_written_once() -> None:
    height, width, tile, overlap = 1000, 700, 128, 32
    seen: list[tuple[int, ...]] = []
    written = np.zeros((height, width), dtype=int)

    def counting_model(x: np.ndarray) -> np.ndarray:
        seen.append(x.shape)
        return x * 2

    def read(rows: slice, cols: slice) -> np.ndarray:
        return np.ones((1, rows.stop - rows.start, cols.stop - cols.start), np.float32)

    def write(rows: slice, cols: slice, block: np.ndarray) -> None:
        assert block.shape[-2:] == written[rows, cols].shape
        np.testing.assert_allclose(block, 2.0, rtol=1e-6)
        written[rows, cols] += 1

    tiled_inference(counting_model, read, height, width, write, tile, overlap)
    assert len(seen) == 8 * 6  # one run per tile
    assert max(max(s[-2:]) for s in seen) <= tile + 2 * overlap
    assert (written == 1).all()


def test_peak_memory_is_bounded_by_the_tile_not_the_image() -> None:
    height = width = 4096
    features = 4
    whole_output = features * height * width * 4  # bytes of the float32 result alone

    def read(rows: slice, cols: slice) -> np.ndarray:
        return np.ones((1, rows.stop - rows.start, cols.stop - cols.start), np.float32)

    def run(x: np.ndarray) -> np.ndarray:
        return np.repeat(x, features, axis=0)

    tracemalloc.start()
    try:
        tiled_inference(run, read, height, width, lambda *_: None, tile=256, overlap=32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < whole_output / 10


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return load_model(tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"))


def test_tiled_model_output_equals_the_whole_image_run(tiny) -> None:
    model, config = tiny
    image = np.random.default_rng(2).uniform(0, 0.4, (len(config["bands"]), 150, 140))
    image = image.astype(np.float32)
    whole = model_features(model, window=5, tile=1024, output="residual")(image)
    written = np.full_like(whole, np.nan)

    def write(date: int, rows: slice, cols: slice, block: np.ndarray) -> None:
        assert date == 0
        written[:, rows, cols] = block

    embed_dates(
        model,
        config,
        image[None],
        np.ones((1, 150, 140), bool),
        write,
        window=5,
        output="residual",
        tile=64,
        overlap=48,
        device="cpu",
    )
    np.testing.assert_allclose(written, whole, rtol=1e-4, atol=1e-4)


def test_invalid_pixels_take_the_nearest_valid_date() -> None:
    images = np.stack([np.full((2, 1, 3), v, np.float32) for v in (1, 2, 3)])
    valid = np.array([[[1, 0, 0]], [[0, 1, 0]], [[1, 0, 0]]], bool)
    filled = np.stack([fill_from_nearest_date(images, valid, t) for t in range(3)])
    np.testing.assert_array_equal(filled[:, 0, 0], [[1, 2, 0], [1, 2, 0], [3, 2, 0]])


def test_scene_standardisation_is_computed_once_over_the_date() -> None:
    image = np.random.default_rng(3).normal(2, 3, (4, 60, 50)).astype(np.float32)
    preparation = input_preparation({"normalisation": SCENE_STANDARDISED})
    per_tile = date_preparation(preparation, image, np.ones((60, 50), bool))
    np.testing.assert_allclose(per_tile(image[:, :20, 10:30]), standardise(image)[:, :20, 10:30])


def test_change_score_and_mask_are_those_of_detect_changes() -> None:
    rng = np.random.default_rng(4)
    f1, f2 = rng.normal(size=(2, 6, 40, 30)).astype(np.float32)
    f2[:, 10:20, 5:15] += 3
    valid = np.ones((40, 30), bool)
    valid[:3] = False
    features = {id(f1): f1, id(f2): f2}
    pair = ChangePair("p", f1, f2, np.zeros((40, 30), bool), valid)
    expected = detect_changes(pair, lambda image: features[id(image)], sigma=1.0)
    score = change_score(f1, f2, sigma=1.0, block=7)
    np.testing.assert_allclose(score, expected.distance, rtol=1e-6)
    mask, threshold = change_mask(score, valid)
    assert threshold == pytest.approx(otsu_threshold(score[valid]))
    np.testing.assert_array_equal(mask, expected.prediction)
    fixed, used = change_mask(score, valid, threshold=0.5)
    assert used == 0.5
    np.testing.assert_array_equal(fixed, (score > 0.5) & valid)


def test_a_pair_without_a_valid_pixel_has_no_change() -> None:
    mask, threshold = change_mask(np.ones((4, 5), np.float32), np.zeros((4, 5), bool))
    assert not mask.any() and np.isnan(threshold)
