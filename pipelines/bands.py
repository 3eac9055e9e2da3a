"""One band vocabulary for Sentinel-2 L2A across STAC providers.

Bands are named by their ESA names (``B02``); each provider names the same asset differently:
Earth Search v1 uses common names (``blue``), Planetary Computer the ESA names (``B02``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Band:
    """A Sentinel-2 L2A band: ESA name, Earth Search v1 asset key, native resolution, and the
    description and wavelengths (um) that Earth Search writes into ``eo:bands``."""

    name: str
    earth_search_key: str
    resolution_m: int
    center_wavelength_um: float | None = None
    full_width_half_max_um: float | None = None
    description: str = ""


SPECTRAL_BANDS: tuple[Band, ...] = (
    Band("B01", "coastal", 60, 0.443, 0.027, "Coastal aerosol (band 1)"),
    Band("B02", "blue", 10, 0.49, 0.098, "Blue (band 2)"),
    Band("B03", "green", 10, 0.56, 0.045, "Green (band 3)"),
    Band("B04", "red", 10, 0.665, 0.038, "Red (band 4)"),
    Band("B05", "rededge1", 20, 0.704, 0.019, "Red edge 1 (band 5)"),
    Band("B06", "rededge2", 20, 0.74, 0.018, "Red edge 2 (band 6)"),
    Band("B07", "rededge3", 20, 0.783, 0.028, "Red edge 3 (band 7)"),
    Band("B08", "nir", 10, 0.842, 0.145, "NIR 1 (band 8)"),
    Band("B8A", "nir08", 20, 0.865, 0.033, "NIR 2 (band 8A)"),
    Band("B09", "nir09", 60, 0.945, 0.026, "NIR 3 (band 9)"),
    Band("B11", "swir16", 20, 1.61, 0.143, "SWIR 1 (band 11)"),
    Band("B12", "swir22", 20, 2.19, 0.242, "SWIR 2 (band 12)"),
)
SCL = Band("SCL", "scl", 20)
BANDS_BY_NAME: dict[str, Band] = {b.name: b for b in (*SPECTRAL_BANDS, SCL)}

# Asset key of each band per provider (Planetary Computer keys its assets by the ESA name).
PROVIDER_ASSET_KEYS: dict[str, dict[str, str]] = {
    "earth-search": {b.name: b.earth_search_key for b in (*SPECTRAL_BANDS, SCL)},
    "planetary-computer": {b.name: b.name for b in (*SPECTRAL_BANDS, SCL)},
}

# Scene Classification Layer classes (ESA L2A product definition).
SCL_CLASSES: dict[int, str] = {
    0: "no_data",
    1: "saturated_or_defective",
    2: "dark_area",
    3: "cloud_shadow",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud_medium_probability",
    9: "cloud_high_probability",
    10: "thin_cirrus",
    11: "snow",
}
SCL_INVALID_DEFAULT: tuple[int, ...] = (0, 1, 3, 8, 9, 10, 11)


def band(name: str) -> Band:
    """Look a band up by ESA name, with an error that lists the known names."""
    try:
        return BANDS_BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"unknown Sentinel-2 L2A band {name!r}; known bands: {', '.join(BANDS_BY_NAME)}"
        ) from None


def asset_key(item: dict, band_name: str) -> str:
    """The asset key that holds ``band_name`` in this STAC item, whichever provider made it."""
    for keys in PROVIDER_ASSET_KEYS.values():
        key = keys.get(band_name)
        if key is not None and key in item.get("assets", {}):
            return key
    raise KeyError(
        f"item {item.get('id')!r} has no asset for band {band_name}; its assets are "
        f"{sorted(item.get('assets', {}))}"
    )
