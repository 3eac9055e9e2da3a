"""Broken imagery in one partition of the tiny demo world: a truncated COG, a band that is all
nodata, a band whose CRS is not its item's, a date whose SCL file is missing.

The chain's dataset assets run on the broken partition (``lombardy|2024-04-01``, the date
2024-05-10 broken) after another partition (``beauce|2024-07-01``) was materialised. Expected:
the partition fails with an error naming the broken file, or the bad date is left out of the
stack and the log names it (an all-nodata date may stay with a valid fraction of 0, which the
tiling skips); the other partition's outputs untouched, byte for byte. The wrong CRS is the
silent kind: the band is relabelled from WGS 84 to ED50 in the same UTM zone, pixels and
transform unchanged, so read by its own georeference it lands about a hundred metres off.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS

from tests.assets.demo_chain import REPO, tiny_config
from tests.faults.kills import _chain_env
from tests.faults.outcome import FaultRow
from tests.faults.outputs import digests

BROKEN, OTHER = "lombardy|2024-04-01", "beauce|2024-07-01"
BAD_ITEM, BAD_DATE = "S2B_32TNR_20240510_0_L2A", "2024-05-10"


def truncate(path: Path) -> None:
    """Cut the COG to half its bytes, as an interrupted download would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def all_nodata(path: Path) -> None:
    """Rewrite the band with its nodata value everywhere (0 where it declares none)."""
    with rasterio.open(path) as src:
        profile, nodata = src.profile, src.nodata if src.nodata is not None else 0
        shape = (src.count, src.height, src.width)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full(shape, nodata, dtype=profile["dtype"]))


def wrong_crs(path: Path) -> None:
    """Rewrite the band, same pixels and transform, labelled ED50 / UTM in its WGS 84 UTM zone
    (EPSG 326zz becomes 230zz): a mislabelled export, off by the datum shift."""
    with rasterio.open(path) as src:
        profile, pixels, epsg = src.profile, src.read(), src.crs.to_epsg()
    if not 32628 <= epsg <= 32638:
        raise ValueError(f"{path} is in EPSG:{epsg}, not a northern UTM zone that ED50 covers")
    with rasterio.open(path, "w", **{**profile, "crs": CRS.from_epsg(epsg - 32600 + 23000)}) as dst:
        dst.write(pixels)


def remove(path: Path) -> None:
    path.unlink()


FAULTS: list[tuple[str, str, Callable[[Path], None]]] = [
    ("truncated COG (B04 of one date cut in half)", "B04.tif", truncate),
    ("all-nodata band (B04 of one date)", "B04.tif", all_nodata),
    ("a COG with the wrong CRS (B04 of one date relabelled ED50)", "B04.tif", wrong_crs),
    ("a date whose SCL file is missing", "SCL.tif", remove),
]


def _run(tmp: Path, config: Path, key: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "tests.faults.run_partition", key]
    env = {**os.environ, **_chain_env(tmp, config)}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _outputs_of(data: Path, key: str) -> dict[str, str]:
    region, time = key.split("|")
    return {
        path: digest
        for path, digest in digests(data).items()
        if f"{region}/{time}" in path or f"{region}__{time}" in path
    }


def _naming_line(output: str, names: tuple[str, ...]) -> str:
    """The last log line that names the broken file or its item, or empty."""
    lines = [line for line in output.splitlines() if any(n in line for n in names)]
    return lines[-1].strip() if lines else ""


def _stack_dates(data: Path) -> dict[str, float]:
    from pipelines.stack_store import open_stack

    region, time = BROKEN.split("|")
    stack = open_stack(data / "stacks" / region / f"{time}.zarr")
    ids, fractions = stack["item_ids"].values.tolist(), stack["valid_fraction"].values.tolist()
    return dict(zip(ids, fractions, strict=True))


def imagery_faults(tmp: Path) -> list[FaultRow]:
    """Each fault in turn on the broken partition, its file restored after."""
    config = tiny_config(tmp)
    data = tmp / "data"
    first = _run(tmp, config, OTHER)
    if first.returncode != 0:
        raise RuntimeError(f"the clean partition failed: {first.stderr[-2000:]}")
    other = _outputs_of(data, OTHER)
    rows = []
    for fault, name, inject in FAULTS:
        path = data / "demo_world" / "lombardy" / BAD_ITEM / name
        backup = path.with_name(f"{name}.orig")
        shutil.copy2(path, backup)
        inject(path)
        try:
            run = _run(tmp, config, BROKEN)
        finally:
            shutil.move(backup, path)
        row = _judge(fault, run, data, path, _outputs_of(data, OTHER) == other)
        row.what_the_user_sees = row.what_the_user_sees.replace(str(data), "<data>")
        rows.append(row)
    return rows


def _recorded_fraction(home: Path) -> float | None:
    """The bad date's valid fraction in the broken partition's last stack materialisation."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.fetch_materializations(dg.AssetKey("coregistered_stack"), limit=50)
        for record in records.records:
            event = record.asset_materialization
            if event is not None and event.partition == BROKEN:
                return event.metadata["valid_fraction"].value.get(BAD_DATE)
    return None


def _error_start(said: str) -> int:
    """Where the error naming the file starts in a log line: its exception's name (the last one
    before the file's name), else just before the name."""
    named_at = said.find("<data>")
    names = list(re.finditer(r"\w*Error\b", said[: max(named_at, 0)]))
    return names[-1].start() if names else max(named_at - 20, 0)


def _judge(
    fault: str, run: subprocess.CompletedProcess, data: Path, path: Path, other_kept: bool
) -> FaultRow:
    row = FaultRow(fault, "")
    output = run.stdout + run.stderr
    said = _naming_line(output, (str(path), f"{BAD_ITEM}/{path.name}"))
    if run.returncode != 0:
        row.record(
            bool(said) and other_kept,
            data_lost=not other_kept,
            why=f"the partition failed without naming {path.name} of {BAD_ITEM}: "
            f"{output.strip().splitlines()[-1:]}; other partition kept {other_kept}",
        )
        said = said.replace(str(data), "<data>")
        start = _error_start(said)
        row.what_the_user_sees = f"the partition fails: {said[start : start + 320]}" if said else ""
        return row
    dates = _stack_dates(data)
    skipped = BAD_ITEM not in dates or dates[BAD_ITEM] == 0.0
    named = _naming_line(output, (BAD_ITEM,))
    recorded = _recorded_fraction(data.parent / "dagster_home")
    row.record(
        skipped and (bool(named) or recorded == 0.0) and other_kept,
        data_lost=not skipped or not other_kept,
        why=f"the partition succeeded with dates {dates}; log naming the item: {named!r}; "
        f"valid fraction recorded for {BAD_DATE}: {recorded}; other partition kept {other_kept}",
    )
    row.what_the_user_sees = (
        f"the partition succeeds; the date stays in the stack with valid fraction "
        f"{dates.get(BAD_ITEM)}, recorded as {recorded} in the materialisation's valid_fraction, "
        "so the tiling skips it"
        + (f"; the log: {named[-200:]}" if named else "; no log line names it")
    )
    return row
