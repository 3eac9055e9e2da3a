"""Images for people to look at: contrast-stretched previews and change-map PNGs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from matter_model.atomic_io import atomic_write_bytes
from matter_model.change_detection import ChangePair


def contrast_stretch(values: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """``values`` scaled to [0, 1] between their ``low`` and ``high`` percentiles (over the
    finite values, all of them together) and clipped: a stretch that outliers such as clouds or
    saturated pixels do not flatten. NaN shows as 0."""
    finite = values[np.isfinite(values)]
    lo, hi = np.percentile(finite, [low, high]) if finite.size else (0.0, 1.0)
    return np.nan_to_num(np.clip((values - lo) / max(hi - lo, 1e-6), 0, 1))


def rgb_preview(image: np.ndarray, rgb: tuple[int, int, int] = (2, 1, 0)) -> np.ndarray:
    """An ``(H, W, 3)`` float image in [0, 1]: bands ``rgb``, each stretched between its own 2-98 %
    (:func:`contrast_stretch`)."""
    out = np.empty((*image.shape[1:], 3), dtype=np.float32)
    for k, c in enumerate(rgb):
        out[..., k] = contrast_stretch(image[c].astype(np.float32))
    return out


def render_change_map(
    pair: ChangePair,
    prediction: np.ndarray,
    path: str | Path | None = None,
    rgb: tuple[int, int, int] = (2, 1, 0),
    title: str | None = None,
) -> bytes:
    """PNG of date 1, date 2 (RGB), truth and prediction side by side; written atomically.

    Prediction colours: white = true change, red = false alarm, blue = missed change, grey =
    invalid. ``rgb`` are the band indices of red, green and blue (B04, B03, B02 in the
    authors' 9-band order).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    truth = pair.truth.astype(bool)
    pred = prediction.astype(bool)
    errors = np.zeros((*truth.shape, 3), dtype=np.float32)
    errors[pred & truth] = (1, 1, 1)
    errors[pred & ~truth] = (1, 0, 0)
    errors[~pred & truth] = (0, 0.4, 1)
    if pair.valid is not None:
        errors[~pair.valid.astype(bool)] = (0.5, 0.5, 0.5)

    fig = Figure(figsize=(16, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    panels = [
        (rgb_preview(pair.image_1, rgb), "date 1"),
        (rgb_preview(pair.image_2, rgb), "date 2"),
        (truth, "truth"),
        (errors, "prediction (white TP, red FP, blue FN)"),
    ]
    for k, (img, name) in enumerate(panels):
        ax = fig.add_subplot(1, 4, k + 1)
        ax.imshow(img, cmap="gray", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title or pair.name)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data
