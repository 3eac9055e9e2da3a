"""Asset checks: is each stage's output plausible before the next stage builds on it?

Every check is blocking: when it fails (an error; a warning such as an all-cloudy screen does not
block), the downstream assets of that partition do not run in the same run, and the result, with
the figures it judged, shows on the asset's "Checks" tab in the UI.
Thresholds come from the ``checks:`` section of the project configuration (defaults and their
meaning in ``assets.config.CheckSettings``).
"""

import inspect
import warnings
from collections.abc import Callable

import dagster as dg
import numpy as np
import pandas as pd
import zarr

from assets.imagery import coregistered_stack
from assets.partitions import CONFIG, REGION_TIMES, RegionTime, region_time
from assets.patches import change_screen, patch_triplets, tiling_inputs
from assets.resources import DataStore
from matter_model.patch_store import ROLES
from pipelines.dates import stack_dates
from pipelines.shift import estimate_shift
from pipelines.stack_store import open_stack
from pipelines.tiling import count_triplets

# Partitioned asset checks are marked "preview" in this Dagster release; they are what lets a
# check judge the partition its asset run materialised, so the warning is acknowledged here.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")
# Triplets read at a time by the patch check: bounded memory on shards of any size.
PATCH_BLOCK = 256


# The judgement of every check by name, callable on any store and partition without Dagster.
JUDGES: dict[str, Callable[[DataStore, RegionTime], dg.AssetCheckResult]] = {}


def partition_check(asset: dg.AssetsDefinition):
    """Turn ``judge(store, part)`` into a blocking check of each region x time partition of
    ``asset``, named and described after the judge (which stays in :data:`JUDGES`)."""

    def decorate(judge: Callable[[DataStore, RegionTime], dg.AssetCheckResult]):
        JUDGES[judge.__name__] = judge

        @dg.asset_check(
            asset=asset,
            name=judge.__name__,
            description=inspect.getdoc(judge),
            blocking=True,
            partitions_def=REGION_TIMES,
        )
        def check(context: dg.AssetCheckExecutionContext, store: DataStore) -> dg.AssetCheckResult:
            return judge(store, region_time(context))

        return check

    return decorate


def setting(name: str):
    """A check threshold: the configuration's ``checks.<name>`` (its default when unset)."""
    return getattr(CONFIG.checks, name)


@partition_check(coregistered_stack)
def cloud_free_fraction(store: DataStore, part: RegionTime) -> dg.AssetCheckResult:
    """Enough of the stack is cloud-free (valid in SCL) to be worth screening and tiling."""
    stack = open_stack(store.stack(part.region, part.time))
    per_date = stack["valid_fraction"].values.astype(float)
    dates = stack_dates(stack)
    overall = float(per_date.mean())
    threshold = float(setting("min_cloud_free_fraction"))
    return dg.AssetCheckResult(
        passed=overall >= threshold,
        description=f"{overall:.1%} of the pixel-dates are cloud-free (threshold {threshold:.0%})",
        metadata={
            "cloud_free_fraction": overall,
            "threshold": threshold,
            "per_date": dg.MetadataValue.json(
                dict(zip(dates, per_date.round(4).tolist(), strict=True))
            ),
        },
    )


def residual_shifts(stack, band: str = "B08") -> dict[str, float | None]:
    """Per date: the shift (px) still left between it and the reference date after correction.

    Measured on a central crop of the stack with the same estimator that corrected it; None
    for the reference date and for dates that overlap it too little to measure.
    """
    crop = int(setting("residual_crop_px"))
    height, width = stack.sizes["y"], stack.sizes["x"]
    y0, x0 = max(0, (height - crop) // 2), max(0, (width - crop) // 2)
    window = {"y": slice(y0, y0 + crop), "x": slice(x0, x0 + crop)}
    reflectance = stack["reflectance"].sel(band=band).isel(window).values
    valid = stack["valid"].isel(window).values
    dates = stack_dates(stack)
    reference = dates.index(str(stack.attrs["reference_date"])[:10])
    residuals: dict[str, float | None] = {}
    for t, date in enumerate(dates):
        both = valid[t] & valid[reference]
        if t == reference or both.mean() < float(setting("min_overlap_fraction")):
            residuals[date] = None
            continue
        shift = estimate_shift(
            np.nan_to_num(reflectance[reference]), np.nan_to_num(reflectance[t]), both
        )
        residuals[date] = float(np.hypot(*shift))
    return residuals


@partition_check(coregistered_stack)
def coregistration_residual(store: DataStore, part: RegionTime) -> dg.AssetCheckResult:
    """After correction, no date is still shifted against the reference by more than the limit."""
    residuals = residual_shifts(open_stack(store.stack(part.region, part.time)))
    measured = [r for r in residuals.values() if r is not None]
    worst = max(measured, default=0.0)
    threshold = float(setting("max_residual_shift_px"))
    return dg.AssetCheckResult(
        passed=worst <= threshold,
        description=(
            f"largest residual shift {worst:.3f} px over {len(measured)} re-measured date(s) "
            f"(threshold {threshold} px)"
        ),
        metadata={
            "max_residual_px": worst,
            "threshold_px": threshold,
            "per_date_px": dg.MetadataValue.json(
                {d: None if r is None else round(r, 4) for d, r in residuals.items()}
            ),
        },
    )


@partition_check(change_screen)
def unchanged_share(store: DataStore, part: RegionTime) -> dg.AssetCheckResult:
    """The share of valid windows kept as unchanged is neither implausibly low nor high.

    Near 0 the threshold or the radiometry is off; near 1 the screen sees no change at all. The
    range is enforced from ``min_windows_for_share`` valid windows on (in a tiny region every
    window may well be unchanged). A partition without a single valid window (all cloudy) is a
    warning, not a failure: tiling then writes an empty shard.
    """
    table = pd.read_csv(store.screen(part.region, part.time))
    min_valid = CONFIG.screen.min_valid_fraction
    valid_windows = int((table["min_valid_fraction"] >= min_valid).sum())
    kept = int(table["unchanged"].sum())
    low, high = (float(v) for v in setting("unchanged_share"))
    if valid_windows == 0:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description="no window is valid enough at every date (all cloudy?): nothing to tile",
            metadata={"windows": len(table), "valid_windows": 0},
        )
    share = kept / valid_windows
    judged = valid_windows >= int(setting("min_windows_for_share"))
    return dg.AssetCheckResult(
        passed=low <= share <= high or not judged,
        description=f"{kept} of {valid_windows} valid windows kept ({share:.1%}; "
        + (f"plausible range {low:.0%}-{high:.0%})" if judged else "too few windows to judge)"),
        metadata={
            "unchanged_share": share,
            "kept": kept,
            "valid_windows": valid_windows,
            "range": [low, high],
        },
    )


def bad_patches(group: zarr.Group) -> dict[str, dict[str, int]]:
    """Per role, the patches holding NaN or infinity and the flat ones (one value throughout)."""
    counts = {"non_finite": dict.fromkeys(ROLES, 0), "flat": dict.fromkeys(ROLES, 0)}
    for role in ROLES:
        array = group[role]
        for start in range(0, array.shape[0], PATCH_BLOCK):
            block = array[start : start + PATCH_BLOCK].astype(np.float32)
            block = block.reshape(len(block), -1)
            finite = np.isfinite(block).all(axis=1)
            counts["non_finite"][role] += int((~finite).sum())
            counts["flat"][role] += int((np.ptp(block[finite], axis=1) == 0).sum())
    return counts


@partition_check(patch_triplets)
def patches_finite_and_not_empty(store: DataStore, part: RegionTime) -> dg.AssetCheckResult:
    """No anchor, positive or negative patch holds NaN or infinity, or is one flat value."""
    group = zarr.open_group(store.patch_store / "shards" / part.shard_id, mode="r")
    counts = bad_patches(group)
    bad = sum(sum(per_role.values()) for per_role in counts.values())
    triplets = int(group["anchor"].shape[0])
    return dg.AssetCheckResult(
        passed=bad == 0,
        description=f"{bad} bad patch(es) in {triplets} triplets",
        metadata={
            "triplets": triplets,
            "patches_with_nan_or_inf": dg.MetadataValue.json(counts["non_finite"]),
            "flat_patches": dg.MetadataValue.json(counts["flat"]),
        },
    )


@partition_check(patch_triplets)
def patch_count_matches_windows(store: DataStore, part: RegionTime) -> dg.AssetCheckResult:
    """The shard holds exactly the triplets its unchanged windows predict: none lost, none extra."""
    inputs = tiling_inputs(store, part)
    expected = count_triplets(inputs.source, inputs.screen, inputs.settings, inputs.negative_pool)
    table = store.patch_store / "shards" / part.shard_id / "patches.csv"
    actual = len(pd.read_csv(table))
    return dg.AssetCheckResult(
        passed=actual == expected,
        description=f"{actual} triplets written, {expected} predicted by the unchanged windows",
        metadata={"written": actual, "predicted": expected},
    )
