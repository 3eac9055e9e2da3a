"""Materials of the demo world: their 12-band L2A reflectance spectra and textures.

Spectra are surface reflectance (0-1) in the order of ``pipelines.bands.SPECTRAL_BANDS``
(B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12). Textures are fixed per place (they do not
change between dates, so an unchanged place keeps its look); what does change between dates on
unchanged ground (crop calendars, leaf-out, soil moisture, water, sun on the terrain) is
``pipelines.demo_world.phenology``, which mixes the spectra here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

from pipelines.bands import SPECTRAL_BANDS


class Material(IntEnum):
    """Material code as written in the ground-truth rasters (0 is reserved for nodata)."""

    CROP_MAIZE = 1
    CROP_WHEAT = 2
    FOREST = 3
    WATER = 4
    BARE_SOIL = 5
    BUILT_UP = 6
    EXCAVATION = 7  # exposed chalky subsoil and gravel of an earthworks site


# SCL class a clear pixel of each material gets: 4 vegetation, 5 not vegetated, 6 water.
MATERIAL_SCL: dict[Material, int] = {
    Material.CROP_MAIZE: 4,
    Material.CROP_WHEAT: 4,
    Material.FOREST: 4,
    Material.WATER: 6,
    Material.BARE_SOIL: 5,
    Material.BUILT_UP: 5,
    Material.EXCAVATION: 5,
}


def _spectrum(*values: float) -> np.ndarray:
    if len(values) != len(SPECTRAL_BANDS):
        raise ValueError(f"a spectrum needs {len(SPECTRAL_BANDS)} values, got {len(values)}")
    return np.asarray(values, dtype=np.float32)


#                     B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09   B11   B12
SPECTRA: dict[Material, np.ndarray] = {
    Material.CROP_MAIZE: _spectrum(
        0.030, 0.035, 0.075, 0.040, 0.105, 0.300, 0.380, 0.420, 0.430, 0.400, 0.220, 0.110
    ),
    Material.CROP_WHEAT: _spectrum(
        0.035, 0.040, 0.085, 0.050, 0.120, 0.280, 0.340, 0.370, 0.380, 0.350, 0.240, 0.130
    ),
    Material.FOREST: _spectrum(
        0.020, 0.025, 0.050, 0.025, 0.070, 0.220, 0.280, 0.300, 0.310, 0.280, 0.150, 0.070
    ),
    Material.WATER: _spectrum(
        0.050, 0.060, 0.070, 0.045, 0.035, 0.020, 0.015, 0.012, 0.010, 0.008, 0.005, 0.003
    ),
    Material.BARE_SOIL: _spectrum(
        0.080, 0.100, 0.140, 0.180, 0.210, 0.230, 0.250, 0.270, 0.280, 0.270, 0.330, 0.280
    ),
    Material.BUILT_UP: _spectrum(
        0.100, 0.120, 0.140, 0.160, 0.180, 0.190, 0.200, 0.210, 0.210, 0.200, 0.240, 0.220
    ),
    # Bright and nearly flat: calcareous subsoil, no iron-oxide red slope, no crop residue.
    Material.EXCAVATION: _spectrum(
        0.200, 0.240, 0.280, 0.310, 0.330, 0.340, 0.350, 0.360, 0.365, 0.350, 0.390, 0.330
    ),
}

# Phenological states (pipelines.demo_world.phenology mixes them with the spectra above).
# Senescent (ripe) cereal, also drying maize leaves: no chlorophyll, straw-coloured.
SENESCENT_WHEAT = _spectrum(
    0.060, 0.070, 0.100, 0.130, 0.170, 0.220, 0.250, 0.270, 0.280, 0.260, 0.340, 0.250
)
# Stubble after harvest: bright straw residue, cellulose absorption lowering B12.
STUBBLE = _spectrum(
    0.080, 0.095, 0.125, 0.160, 0.195, 0.230, 0.250, 0.265, 0.275, 0.260, 0.360, 0.270
)
# A deciduous stand before leaf-out: branches over litter.
LEAFLESS_CANOPY = _spectrum(
    0.030, 0.040, 0.060, 0.075, 0.100, 0.130, 0.150, 0.165, 0.170, 0.160, 0.230, 0.160
)
# Drought-browned foliage: less chlorophyll (red up) and lower NIR than the green canopy.
BROWN_CANOPY = _spectrum(
    0.025, 0.035, 0.060, 0.060, 0.100, 0.180, 0.210, 0.230, 0.235, 0.215, 0.200, 0.110
)
# Sediment-laden river water: brighter green to red and red edge 1 than clear water.
TURBID_WATER = _spectrum(
    0.060, 0.075, 0.100, 0.095, 0.080, 0.040, 0.030, 0.025, 0.020, 0.012, 0.006, 0.003
)
# Built-up surfaces: asphalt roads and three roof types (concrete, red tiles, bright metal).
ASPHALT = _spectrum(
    0.070, 0.075, 0.080, 0.085, 0.090, 0.092, 0.095, 0.100, 0.100, 0.095, 0.110, 0.105
)
URBAN_SURFACES = np.stack(
    [
        ASPHALT,
        _spectrum(
            0.120, 0.140, 0.160, 0.180, 0.200, 0.210, 0.220, 0.230, 0.230, 0.220, 0.260, 0.240
        ),
        _spectrum(
            0.060, 0.070, 0.090, 0.190, 0.240, 0.260, 0.270, 0.280, 0.285, 0.270, 0.320, 0.260
        ),
        _spectrum(
            0.250, 0.270, 0.290, 0.300, 0.310, 0.310, 0.310, 0.320, 0.320, 0.300, 0.330, 0.300
        ),
    ]
)
# Optically thick cloud: bright, flat in the visible, lower in the water-vapour and SWIR bands.
CLOUD = _spectrum(
    0.520, 0.540, 0.530, 0.520, 0.520, 0.510, 0.510, 0.500, 0.490, 0.380, 0.350, 0.250
)


def standardise(field: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation (float32)."""
    field = field - field.mean()
    return (field / (field.std() + 1e-12)).astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, standardised: blobs of about ``sigma`` px."""
    white = rng.standard_normal(shape).astype(np.float32)
    return standardise(ndimage.gaussian_filter(white, sigma, mode="wrap"))


def multiscale_noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    sigmas: tuple[float, ...] = (0.7, 1.5, 3.0, 6.0, 12.0),
    persistence: float = 0.7,
) -> np.ndarray:
    """Fractal-like noise: a sum of smooth noises whose weight grows with their scale."""
    total = np.zeros(shape, np.float32)
    for octave, sigma in enumerate(sigmas):
        total += persistence ** (len(sigmas) - 1 - octave) * smooth_noise(rng, shape, sigma)
    return standardise(total)


def stripes(
    rows: np.ndarray, cols: np.ndarray, period_px: np.ndarray, angle_rad: np.ndarray
) -> np.ndarray:
    """Sinusoidal crop rows in [-1, 1]; period and orientation may vary per pixel."""
    phase = cols * np.cos(angle_rad) + rows * np.sin(angle_rad)
    return np.sin(2 * np.pi * phase / period_px)


@dataclass(frozen=True)
class Textures:
    """Place-bound texture fields of one tile (10 m grid); rendering is per-material lookup."""

    parcels: np.ndarray  # field parcel label 0..n_parcels-1 of every pixel
    crop: np.ndarray  # multiplicative modulation for crops: parcel brightness and row stripes
    forest: np.ndarray  # multiplicative canopy modulation
    soil: np.ndarray  # multiplicative modulation: moisture patches and speckle
    water: np.ndarray  # multiplicative modulation: faint and smooth
    urban_surface: np.ndarray  # index into URBAN_SURFACES per pixel (0 = road)
    urban: np.ndarray  # multiplicative modulation of urban surfaces


def make_textures(
    rng: np.random.Generator, parcels: np.ndarray, n_parcels: int, block_px: int = 14
) -> Textures:
    """Texture fields for a tile whose crop parcels are labelled ``0..n_parcels-1``."""
    shape = parcels.shape
    angles = rng.choice(
        [0.0, np.pi / 2, np.pi / 4, -np.pi / 4], size=n_parcels, p=[0.4, 0.4, 0.1, 0.1]
    )
    periods = rng.uniform(3.0, 6.0, size=n_parcels)
    brightness = rng.uniform(0.9, 1.1, size=n_parcels).astype(np.float32)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    crop = brightness[parcels] * (1 + 0.08 * stripes(rows, cols, periods[parcels], angles[parcels]))
    crop *= 1 + 0.03 * rng.standard_normal(shape)

    forest = np.clip(1 + 0.18 * multiscale_noise(rng, shape), 0.4, 1.6)
    soil = 1 + 0.10 * smooth_noise(rng, shape, 8.0) + 0.06 * rng.standard_normal(shape)
    water = 1 + 0.03 * smooth_noise(rng, shape, 10.0)

    # City blocks of block_px with 2 px roads; each 3x3 px building cell gets one roof type.
    road = (rows % block_px < 2) | (cols % block_px < 2)
    cells = rng.integers(1, len(URBAN_SURFACES), size=(shape[0] // 3 + 1, shape[1] // 3 + 1))
    urban_surface = np.where(road, 0, cells[rows // 3, cols // 3]).astype(np.uint8)
    urban = 1 + 0.08 * rng.standard_normal(shape)
    return Textures(
        parcels=parcels,
        crop=crop.astype(np.float32),
        forest=forest.astype(np.float32),
        soil=soil.astype(np.float32),
        water=water.astype(np.float32),
        urban_surface=urban_surface,
        urban=urban.astype(np.float32),
    )
