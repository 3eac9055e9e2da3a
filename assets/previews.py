"""Preview images for the Dagster UI: PNGs written beside the data and embedded in metadata."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import dagster as dg
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from matter_model.atomic_io import atomic_write_bytes  # noqa: E402
from matter_model.rendering import contrast_stretch  # noqa: E402


def true_colour(reflectance: np.ndarray, bands: list[str]) -> np.ndarray:
    """An RGB (y, x, 3) image in 0..1 from B04/B03/B02, the three stretched together by their
    2-98th percentiles."""
    rgb = np.stack([reflectance[bands.index(b)] for b in ("B04", "B03", "B02")], axis=-1)
    return contrast_stretch(rgb)


def figure_png(panels: list[tuple[str, np.ndarray]], path: Path, cmap: str = "gray") -> bytes:
    """Panels side by side (RGB or single-band), saved atomically to ``path``; returns PNG bytes."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2), squeeze=False)
    for ax, (title, image) in zip(axes[0], panels, strict=True):
        ax.imshow(image, cmap=None if image.ndim == 3 else cmap, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return buffer.getvalue()


def png_metadata(png: bytes, path: Path, title: str = "preview") -> dict[str, dg.MetadataValue]:
    """Metadata entries that show the PNG in the UI and link to its file."""
    encoded = base64.b64encode(png).decode()
    return {
        title: dg.MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})"),
        f"{title}_path": dg.MetadataValue.path(str(path)),
    }


def markdown_table(rows: list[dict]) -> dg.MetadataValue:
    """A list of dicts as a Markdown table (floats to 4 significant digits)."""
    if not rows:
        return dg.MetadataValue.md("(empty)")
    columns = list(rows[0])

    def fmt(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))
