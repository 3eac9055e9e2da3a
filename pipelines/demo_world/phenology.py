"""What changes between dates on unchanged ground: phenology, soil, water, sun and terrain.

Real scenes of one place differ between dates without any land-cover change: crops emerge,
ripen and are harvested and ploughed, deciduous canopies leaf out and brown in a dry summer, bare
soil darkens after rain, rivers carry sediment and wet their banks, and the sun's height lights
slopes differently. The demo world has all of these, per parcel, per stand and per date, so that
a change detector has to tell them from the planted land-cover changes by material.

Place-bound traits (:class:`Phenology`: each parcel's crop calendar and tillage, each forest
stand's leaf-out and summer stress, the terrain's slopes, the distance to the river) are drawn
once per region; the conditions of a date (:class:`Conditions`: day of year, sun position, soil
moisture per parcel, water turbidity and level) once per date, from the generator's seeded
streams. :func:`render_surface` turns a material map into surface reflectance with them; the
material truth never changes with them. Every state is a mix of the spectra of ``materials``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipelines.bands import SPECTRAL_BANDS
from pipelines.demo_world.materials import (
    BROWN_CANOPY,
    LEAFLESS_CANOPY,
    SENESCENT_WHEAT,
    SPECTRA,
    STUBBLE,
    TURBID_WATER,
    URBAN_SURFACES,
    Material,
    Textures,
    smooth_noise,
)

SOLAR_HOUR = 10.5  # Sentinel-2's descending node: about 10:30 local solar time
RMS_SLOPE = 0.10  # terrain: rms gradient (m/m, about 6 degrees): gently rolling
# How much wet soil darkens per band at full moisture (water absorbs most in the SWIR).
#                         B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09   B11   B12
WET_SOIL_DARKENING = np.array(
    [0.35, 0.35, 0.35, 0.35, 0.35, 0.36, 0.37, 0.38, 0.38, 0.42, 0.50, 0.55], np.float32
)
PLOUGHED_MOISTURE = 0.6  # fresh clods: rough and moist, darker than the settled seedbed
# Hopkins' bioclimatic law: the season runs about 4 days later per degree of latitude north.
DAYS_PER_DEGREE_NORTH = 4.0
REFERENCE_LATITUDE = 45.0  # the crop calendars below are those of this latitude


def logistic(x: np.ndarray | float) -> np.ndarray:
    """The logistic function, float32."""
    return (1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))).astype(np.float32)


def day_of_year(date: str) -> int:
    return dt.date.fromisoformat(date).timetuple().tm_yday


@dataclass(frozen=True)
class Phenology:
    """Place-bound seasonal traits of one tile (10 m grid)."""

    calendar_shift: np.ndarray  # (n_parcels,) days: a parcel's sowing / ripening / harvest offset
    tillage_delay: np.ndarray  # (n_parcels,) days from a cereal parcel's harvest to ploughing
    forest_shift: np.ndarray  # (rows, cols) days: leaf-out offset of each stand
    forest_stress: np.ndarray  # (rows, cols) 0-1: share of a stand that browns by late summer
    slope_east: np.ndarray  # (rows, cols) terrain gradient dz/dx, m/m
    slope_north: np.ndarray  # (rows, cols) terrain gradient dz/dy, m/m
    shore_distance: np.ndarray  # (rows, cols) px to the nearest water of the base map


def make_phenology(
    rng: np.random.Generator, base: np.ndarray, n_parcels: int, latitude_deg: float
) -> Phenology:
    """Traits for a tile at ``latitude_deg`` whose base material map is ``base`` and which has
    ``n_parcels`` parcels."""
    shape = base.shape
    size = min(shape)
    lag = DAYS_PER_DEGREE_NORTH * (latitude_deg - REFERENCE_LATITUDE)
    calendar_shift = (lag + rng.uniform(-20, 20, n_parcels)).astype(np.float32)
    tillage_delay = rng.uniform(10, 60, n_parcels).astype(np.float32)
    forest_shift = lag + 8 * np.clip(smooth_noise(rng, shape, size / 25), -1.5, 1.5) / 1.5
    forest_stress = 0.45 * np.clip(0.5 + 0.35 * smooth_noise(rng, shape, size / 20), 0, 1)
    height = smooth_noise(rng, shape, size / 6)
    d_row, d_col = np.gradient(height)
    scale = RMS_SLOPE / np.sqrt(np.mean(d_row**2 + d_col**2))
    shore = ndimage.distance_transform_edt(base != Material.WATER)
    return Phenology(
        calendar_shift=calendar_shift,
        tillage_delay=tillage_delay,
        forest_shift=forest_shift.astype(np.float32),
        forest_stress=forest_stress.astype(np.float32),
        slope_east=(scale * d_col).astype(np.float32),
        slope_north=(-scale * d_row).astype(np.float32),  # rows run southwards
        shore_distance=shore.astype(np.float32),
    )


def sun_position(doy: int, latitude_deg: float, solar_hour: float = SOLAR_HOUR) -> tuple:
    """(elevation, azimuth clockwise from north) of the sun in degrees."""
    lat = np.radians(latitude_deg)
    declination = np.radians(23.44) * np.sin(2 * np.pi * (284 + doy) / 365)
    hour_angle = np.radians(15 * (solar_hour - 12))
    sin_lat, cos_lat = np.sin(lat), np.cos(lat)
    sin_dec, cos_dec = np.sin(declination), np.cos(declination)
    elevation = np.arcsin(sin_lat * sin_dec + cos_lat * cos_dec * np.cos(hour_angle))
    north = sin_dec * cos_lat - cos_dec * sin_lat * np.cos(hour_angle)
    azimuth = np.arctan2(-np.sin(hour_angle) * cos_dec, north)
    return float(np.degrees(elevation)), float(np.degrees(azimuth) % 360)


@dataclass(frozen=True)
class Conditions:
    """The conditions of one date over one tile."""

    day_of_year: int
    sun_elevation_deg: float
    sun_azimuth_deg: float
    soil_moisture: np.ndarray  # (n_parcels,) 0-1: wetness of each parcel's topsoil
    water_turbidity: float  # 0-1: clear to sediment-laden
    water_level: float  # 0-1: how far the river wets its banks (up to half a pixel)

    def record(self) -> dict:
        """JSON-ready summary for the manifest."""
        return {
            "day_of_year": self.day_of_year,
            "sun_elevation_deg": round(self.sun_elevation_deg, 3),
            "sun_azimuth_deg": round(self.sun_azimuth_deg, 3),
            "soil_moisture_mean": round(float(self.soil_moisture.mean()), 4),
            "water_turbidity": round(self.water_turbidity, 4),
            "water_level": round(self.water_level, 4),
        }


def date_conditions(
    rng: np.random.Generator, date: str, latitude_deg: float, n_parcels: int
) -> Conditions:
    """Draw the conditions of ``date``: a rainfall level shared by the tile, varied per parcel."""
    doy = day_of_year(date)
    elevation, azimuth = sun_position(doy, latitude_deg)
    rain = rng.uniform(0, 1)
    moisture = np.clip(0.6 * rain + rng.uniform(-0.2, 0.2, n_parcels), 0, 1)
    return Conditions(
        day_of_year=doy,
        sun_elevation_deg=elevation,
        sun_azimuth_deg=azimuth,
        soil_moisture=moisture.astype(np.float32),
        water_turbidity=round(float(rng.uniform(0, 1)), 4),
        water_level=round(float(rng.uniform(0, 1)), 4),
    )


# ---------------------------------------------------------------------------------------------
# Spectra of a date: per parcel (n_parcels, bands) or per pixel (bands, n_pixels). Days are
# days of the year at the reference latitude for a parcel or stand with no calendar shift.


def soil_spectra(moisture: np.ndarray) -> np.ndarray:
    """Topsoil of each parcel at its moisture (n, bands)."""
    return SPECTRA[Material.BARE_SOIL][None, :] * (1 - moisture[:, None] * WET_SOIL_DARKENING)


def maize_spectra(phenology: Phenology, conditions: Conditions) -> np.ndarray:
    """Maize per parcel: sown bare soil in May, closed canopy by July, drying from late August."""
    t = conditions.day_of_year - phenology.calendar_shift
    cover = 0.95 * logistic((t - 160) / 6)  # half cover on 8 June
    dry = logistic((t - 248) / 7)[:, None]  # half dry on 4 September
    canopy = (1 - dry) * SPECTRA[Material.CROP_MAIZE] + dry * SENESCENT_WHEAT
    return cover[:, None] * canopy + (1 - cover[:, None]) * soil_spectra(conditions.soil_moisture)


def wheat_spectra(phenology: Phenology, conditions: Conditions) -> np.ndarray:
    """Winter wheat per parcel: green in May, ripe in June-July, then stubble, then ploughed."""
    t = conditions.day_of_year - phenology.calendar_shift
    soil = soil_spectra(conditions.soil_moisture)
    ripe = logistic((t - 168) / 5)[:, None]  # half ripe on 16 June, harvested on 13 July
    standing = 0.92 * ((1 - ripe) * SPECTRA[Material.CROP_WHEAT] + ripe * SENESCENT_WHEAT)
    standing = standing + 0.08 * soil
    stubble = 0.75 * STUBBLE + 0.25 * soil
    ploughed = soil_spectra(np.maximum(conditions.soil_moisture, PLOUGHED_MOISTURE))
    harvested = (t >= 195)[:, None]
    tilled = (t >= 195 + phenology.tillage_delay)[:, None]
    return np.where(tilled, ploughed, np.where(harvested, stubble, standing))


def forest_spectra(phenology: Phenology, conditions: Conditions, mask: np.ndarray) -> np.ndarray:
    """Deciduous canopy at the ``mask`` pixels (bands, n): leaf-out in spring, browning in a dry
    late summer, stand by stand."""
    doy = conditions.day_of_year
    leaves = logistic((doy - 110 - phenology.forest_shift[mask]) / 6)  # half out on 19 April
    brown = phenology.forest_stress[mask] * logistic((doy - 225) / 6)  # mid-August drought
    green = leaves * (1 - brown)
    return (
        green * SPECTRA[Material.FOREST][:, None]
        + (leaves * brown) * BROWN_CANOPY[:, None]
        + (1 - leaves) * LEAFLESS_CANOPY[:, None]
    )


def water_spectrum(turbidity: float) -> np.ndarray:
    """Open water between clear (0) and sediment-laden (1)."""
    return (1 - turbidity) * SPECTRA[Material.WATER] + turbidity * TURBID_WATER


def terrain_illumination(phenology: Phenology, conditions: Conditions) -> np.ndarray:
    """Lambertian terrain shading relative to flat ground (rows, cols): how the sun of this date
    lights each slope (cos of the local incidence over cos of the sun's zenith)."""
    elevation = np.radians(conditions.sun_elevation_deg)
    azimuth = np.radians(conditions.sun_azimuth_deg)
    sun = np.cos(elevation) * np.array([np.sin(azimuth), np.cos(azimuth)])
    norm = np.sqrt(1 + phenology.slope_east**2 + phenology.slope_north**2)
    incidence = (
        np.sin(elevation) - sun[0] * phenology.slope_east - sun[1] * phenology.slope_north
    ) / norm
    return (np.maximum(incidence, 0.05) / np.sin(elevation)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Rendering


def render_surface(
    materials: np.ndarray, textures: Textures, phenology: Phenology, conditions: Conditions
) -> np.ndarray:
    """Surface reflectance (bands, rows, cols) float32 of a material map under ``conditions``."""
    out = np.zeros((len(SPECTRAL_BANDS), *materials.shape), np.float32)
    per_parcel = {
        Material.CROP_MAIZE: (maize_spectra(phenology, conditions), textures.crop),
        Material.CROP_WHEAT: (wheat_spectra(phenology, conditions), textures.crop),
        Material.BARE_SOIL: (soil_spectra(conditions.soil_moisture), textures.soil),
    }
    for material, (table, modulation) in per_parcel.items():
        mask = materials == material
        out[:, mask] = table[textures.parcels[mask]].T * modulation[mask]
    mask = materials == Material.FOREST
    out[:, mask] = forest_spectra(phenology, conditions, mask) * textures.forest[mask]
    mask = materials == Material.EXCAVATION
    out[:, mask] = SPECTRA[Material.EXCAVATION][:, None] * textures.soil[mask]
    mask = materials == Material.BUILT_UP
    out[:, mask] = URBAN_SURFACES[textures.urban_surface[mask]].T * textures.urban[mask]
    water = materials == Material.WATER
    out *= np.where(water, 1, terrain_illumination(phenology, conditions))
    spectrum = water_spectrum(conditions.water_turbidity)
    out[:, water] = spectrum[:, None] * textures.water[water]
    _wet_banks(out, water, phenology, conditions.water_level, spectrum)
    return out


def _wet_banks(
    out: np.ndarray,
    water: np.ndarray,
    phenology: Phenology,
    level: float,
    spectrum: np.ndarray,
) -> None:
    """Mix the river's banks towards water in place: at the highest level, half of the first
    pixel out."""
    reach = np.clip(level + 0.5 - phenology.shore_distance, 0, 0.5)
    wet = (reach > 0) & ~water
    weight = reach[wet]
    out[:, wet] = (1 - weight) * out[:, wet] + weight * spectrum[:, None]
