"""Change screening against ground truth: the demo world's planted changes and the OSCD cities.

For each change score (``pipelines.change_screen``: robust CVA, spectral angle, or the residual
after relative radiometric normalisation, with the window maximum or 95th percentile), over 32 px
windows (a window is truly changed when any of its label pixels is change):

- ``kept_precision``: the share of windows kept as unchanged that truly are (the issue's target
  is 0.99), with ``kept_precision_lower_95``, its 95 % lower confidence bound (Wilson), since a
  handful of kept windows proves little; ``unchanged_recall``: the share of truly unchanged
  windows kept;
- at the configured operating point (``screen:`` of ``assets/demo.yaml``), per OSCD city, over
  all cities, and per demo-world partition (region x quarter, as the assets screen them);
- a curve: both figures at thresholds set to quantiles of the method's pooled OSCD scores;
- leave-one-city-out: the loosest threshold whose precision on the other six cities reaches the
  target, applied to the held-out city, so no city's figure comes from a threshold fitted on it.

Writes ``benchmarks/results/change_screen.json`` and prints a table. The OSCD figures need the
release at ``../shared/data/oscd`` (or ``$MATTER_REAL_DATA/oscd``); without it only the demo
world, generated here, is measured at the configured point.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from matter_model.atomic_io import atomic_write_text  # noqa: E402
from matter_model.bands import MATTER_BANDS  # noqa: E402
from matter_model.datasets.oscd import OSCD  # noqa: E402
from pipelines.change_screen import (  # noqa: E402
    screening_quality,
    threshold_for_precision,
    window_scores,
    window_truth,
)
from pipelines.coregistration import coregister  # noqa: E402
from pipelines.dates import item_date, stack_dates  # noqa: E402
from pipelines.demo_world import DEFAULT_SPEC, generate_demo_world  # noqa: E402
from pipelines.demo_world.truth import change_truth  # noqa: E402
from pipelines.grid import region_grid, utm_epsg  # noqa: E402
from pipelines.stack_store import stack_grid  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "change_screen.json"
REAL_DATA = Path(os.environ.get("MATTER_REAL_DATA", REPO.parent / "shared" / "data"))
TARGET_PRECISION = 0.99
# name: (pixel score, window quantile); the first is the pipeline's default.
METHODS = {
    "cva_max": ("cva", 1.0),
    "cva_q95": ("cva", 0.95),
    "sam_max": ("sam", 1.0),
    "rrn_max": ("rrn", 1.0),
    "rrn_q95": ("rrn", 0.95),
}
CURVE_LEVELS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class Windows:
    """The windows of one scene: score, smallest valid fraction, truly changed (flat arrays)."""

    def __init__(self, score: np.ndarray, min_valid: np.ndarray, changed: np.ndarray) -> None:
        self.score, self.min_valid, self.changed = score.ravel(), min_valid.ravel(), changed

    def kept(self, threshold: float, min_valid_fraction: float) -> np.ndarray:
        """The windows ``screen_windows`` keeps as unchanged at ``threshold``."""
        return (
            (self.score < threshold)
            & (self.min_valid >= min_valid_fraction)
            & np.isfinite(self.score)
        )

    def quality(self, threshold: float, min_valid_fraction: float) -> dict[str, float]:
        """The figures of the module docstring at ``threshold``."""
        return kept_quality(
            self.kept(threshold, min_valid_fraction),
            self.changed,
            self.min_valid >= min_valid_fraction,
        )

    def fit_threshold(self, target: float, min_valid_fraction: float) -> float:
        """``threshold_for_precision`` on the windows valid enough to be kept."""
        usable = self.min_valid >= min_valid_fraction
        return threshold_for_precision(self.score[usable], self.changed[usable], target)


def kept_quality(kept: np.ndarray, changed: np.ndarray, valid_enough: np.ndarray) -> dict:
    """``screening_quality`` of the kept windows, its 95 % lower bound, and the recall among
    windows valid enough to be kept (clouds are not the screen's to judge)."""
    quality = screening_quality(pd.DataFrame({"unchanged": kept}), changed)
    true_kept = int((kept & ~changed).sum())
    return {
        **quality,
        "kept_precision_lower_95": wilson_lower(true_kept, quality["kept"]),
        "unchanged_recall_valid": true_kept / max(int((~changed & valid_enough).sum()), 1),
        "windows": int(len(kept)),
    }


def wilson_lower(successes: int, trials: int, z: float = 1.96) -> float:
    """Lower bound of the Wilson score interval of a proportion (0 when there are no trials)."""
    if trials == 0:
        return 0.0
    p = successes / trials
    centre = p + z * z / (2 * trials)
    spread = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return float((centre - spread) / (1 + z * z / trials))


def pooled(scenes: list[Windows]) -> Windows:
    """All windows of several scenes as one."""
    return Windows(
        np.concatenate([s.score for s in scenes]),
        np.concatenate([s.min_valid for s in scenes]),
        np.concatenate([s.changed for s in scenes]),
    )


def oscd_scenes(root: Path, window: int, method: str, quantile: float) -> dict[str, Windows]:
    """Each labelled OSCD city, its two dates scored on the reader's valid pixels."""
    oscd = OSCD(root)
    scenes = {}
    for name in oscd.labelled_cities():
        city = oscd.load(name, MATTER_BANDS, require_label=True)
        reflectance = np.stack([city.image_1, city.image_2])
        valid = np.stack([city.valid, city.valid])
        score, min_valid = window_scores(reflectance, valid, window, method, quantile)
        scenes[name] = Windows(score, min_valid, window_truth(city.label, window))
    return scenes


def demo_stacks(world: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """The default demo world co-registered per region and quarter (the assets' partitions):
    (name, reflectance of the model's bands, valid, planted-change truth)."""
    manifest = generate_demo_world(world, DEFAULT_SPEC)
    items = json.loads((world / "items.json").read_text())["features"]
    stacks = []
    for region in manifest["regions"]:
        ids = set(region["item_ids"].values())
        quarters = defaultdict(list)
        for item in (it for it in items if it["id"] in ids):
            date = item_date(item)
            quarters[f"{date[:4]}-Q{(int(date[5:7]) - 1) // 3 + 1}"].append(item)
        lon0, lat0, lon1, lat1 = region["bbox"]
        grid = region_grid(region["bbox"], utm_epsg((lon0 + lon1) / 2, (lat0 + lat1) / 2))
        for quarter, quarter_items in sorted(quarters.items()):
            stack = coregister(quarter_items, grid, region["name"]).load()
            dates = stack_dates(stack)
            truth = change_truth(world, region["name"], dates, stack_grid(stack))
            # The model's nine bands: OSCD and the L2A stack share their names.
            reflectance = stack["reflectance"].sel(band=list(MATTER_BANDS)).values
            stacks.append(
                (f"{region['name']} {quarter}", reflectance, stack["valid"].values, truth)
            )
    return stacks


def demo_scenes(stacks: list, window: int, method: str, quantile: float) -> dict[str, Windows]:
    """Each demo partition scored like ``screen_windows`` scores it."""
    return {
        name: Windows(
            *window_scores(reflectance, valid, window, method, quantile),
            window_truth(truth, window),
        )
        for name, reflectance, valid, truth in stacks
    }


def leave_one_city_out(
    scenes: dict[str, Windows], target: float, min_valid_fraction: float
) -> dict:
    """Per city: the threshold fitted on the other cities and its quality on this one."""
    per_city, kept = {}, []
    for name, city in scenes.items():
        others = pooled([s for n, s in scenes.items() if n != name])
        threshold = others.fit_threshold(target, min_valid_fraction)
        per_city[name] = {"threshold": threshold, **city.quality(threshold, min_valid_fraction)}
        kept.append(city.kept(threshold, min_valid_fraction))
    everything = pooled(list(scenes.values()))
    return {
        "target_precision": target,
        "overall": kept_quality(
            np.concatenate(kept), everything.changed, everything.min_valid >= min_valid_fraction
        ),
        "per_city": per_city,
    }


def configured_point(screen: dict, oscd_root: Path | None, stacks: list) -> dict:
    """The quality of the configured screen (method, window quantile, threshold) per scene."""
    window, min_valid = int(screen["window"]), float(screen["min_valid_fraction"])
    method, quantile = screen.get("method", "cva"), float(screen.get("quantile", 1.0))
    threshold = float(screen["threshold"])
    demo = demo_scenes(stacks, window, method, quantile)
    oscd = oscd_scenes(oscd_root, window, method, quantile) if oscd_root else {}
    return {
        "pixel_score": method,
        "window_quantile": quantile,
        "threshold": threshold,
        "oscd_overall": pooled(list(oscd.values())).quality(threshold, min_valid) if oscd else None,
        "oscd_per_city": {c: s.quality(threshold, min_valid) for c, s in oscd.items()},
        "demo_overall": pooled(list(demo.values())).quality(threshold, min_valid),
        "demo_per_partition": {d: s.quality(threshold, min_valid) for d, s in demo.items()},
    }


def compare_methods(screen: dict, oscd_root: Path, stacks: list) -> dict:
    """Per method: the curve, leave-one-city-out, and the threshold fitted on all cities."""
    window, min_valid = int(screen["window"]), float(screen["min_valid_fraction"])
    out: dict = {}
    for name, (method, quantile) in METHODS.items():
        demo = pooled(list(demo_scenes(stacks, window, method, quantile).values()))
        cities = oscd_scenes(oscd_root, window, method, quantile)
        oscd = pooled(list(cities.values()))
        thresholds = np.quantile(oscd.score[np.isfinite(oscd.score)], CURVE_LEVELS)
        fitted = oscd.fit_threshold(TARGET_PRECISION, min_valid)
        out[name] = {
            "pixel_score": method,
            "window_quantile": quantile,
            "curve": [
                {
                    "threshold": float(t),
                    "oscd": oscd.quality(t, min_valid),
                    "demo": demo.quality(t, min_valid),
                }
                for t in thresholds
            ],
            "leave_one_city_out": leave_one_city_out(cities, TARGET_PRECISION, min_valid),
            "fitted_on_all_cities": {
                "threshold": fitted,
                "oscd_in_sample": oscd.quality(fitted, min_valid),
                "demo": demo.quality(fitted, min_valid),
            },
        }
    return out


def _row(label: str, q: dict | None) -> str:
    if not q:
        return f"{label:<40} {'-':>6}"
    figures = (
        q["kept_precision"],
        q["kept_precision_lower_95"],
        q["unchanged_recall"],
        q["unchanged_recall_valid"],
    )
    return f"{label:<40} {q['kept']:>6} " + " ".join(f"{f:>8.3f}" for f in figures)


def print_table(results: dict) -> None:
    """The configured point per scene, and per method leave-one-city-out and the curve."""
    print(f"{'scene':<40} {'kept':>6} {'precision':>8} {'P low95':>8} {'recall':>8} {'R valid':>8}")
    configured = results["configured"]
    print(
        f"-- configured: {configured['pixel_score']}, window quantile "
        f"{configured['window_quantile']}, threshold {configured['threshold']}"
    )
    for name, q in configured["oscd_per_city"].items():
        print(_row(f"oscd {name}", q))
    print(_row("oscd all", configured["oscd_overall"]))
    for name, q in configured["demo_per_partition"].items():
        print(_row(f"demo {name}", q))
    print(_row("demo all", configured["demo_overall"]))
    for name, entry in results["methods"].items():
        loco, fitted = entry["leave_one_city_out"], entry["fitted_on_all_cities"]
        print(f"-- {name}: threshold for precision {loco['target_precision']}")
        print(_row("oscd held-out cities (leave one out)", loco["overall"]))
        print(_row(f"oscd in-sample t={fitted['threshold']:.3f}", fitted["oscd_in_sample"]))
        print(_row(f"demo t={fitted['threshold']:.3f}", fitted["demo"]))
        for level, point in zip(CURVE_LEVELS, entry["curve"], strict=True):
            label = f"  curve q{level:.2f} t={point['threshold']:.3f}"
            print(_row(label + " oscd", point["oscd"]))
            print(_row(label + " demo", point["demo"]))


def main() -> None:
    screen = yaml.safe_load((REPO / "assets" / "demo.yaml").read_text())["screen"]
    oscd_root = REAL_DATA / "oscd"
    if not oscd_root.is_dir():
        print(f"OSCD absent at {oscd_root}: measuring the demo world only")
        oscd_root = None
    with tempfile.TemporaryDirectory() as tmp:
        stacks = demo_stacks(Path(tmp) / "world")
        results = {
            "window_px": int(screen["window"]),
            "min_valid_fraction": float(screen["min_valid_fraction"]),
            "truth": "a window is changed when any of its label pixels is change",
            "configured": configured_point(screen, oscd_root, stacks),
            "methods": compare_methods(screen, oscd_root, stacks) if oscd_root else {},
        }
    print_table(results)
    atomic_write_text(RESULTS, json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
