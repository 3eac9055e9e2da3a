"""The Sentinel-2 bands a MATTER model reads, by ESA name, in the order of its input channels."""

from __future__ import annotations

# The nine bands of the MATTER authors' released code.
MATTER_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12")
