"""The fault-injection suite: inject each fault, check what the pipeline does, write the table.

Families (modules under ``tests/faults/``), in this order: STAC API faults, kill -9 inside the
chain's steps, inside training and inside the model assets followed by a rerun (a count of 0
leaves a kind out), disk full while a stack, a shard and a checkpoint are written, broken
imagery in one partition, and two runs of one partition at once.
Kill moments are drawn from ``--seed``. Everything runs on the tiny demo world in a temporary
folder.

Writes ``benchmarks/results/faults.json``, a list of rows, one per fault: fault, injected,
survived, data_lost, what_the_user_sees, and failures (what happened where it did not
survive); and the table of ``docs/reliability.md`` between its markers. Exits 1 when any
injection did not survive.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from matter_model.atomic_io import atomic_write_text  # noqa: E402
from tests.faults.outcome import FaultRow  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "faults.json"
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = (
    "<!-- faults table: written by benchmarks/faults.py -->",
    "<!-- end of faults table -->",
)
FAMILIES = ("stac", "kills", "disk", "imagery", "concurrent")

log = logging.getLogger(__name__)


def run_family(name: str, tmp: Path, args: argparse.Namespace) -> list[FaultRow]:
    """The rows of one family of faults, run in its own folder under ``tmp``."""
    folder = tmp / name
    folder.mkdir()
    if name == "stac":
        from pipelines.demo_world import TINY_SPEC, generate_demo_world
        from tests.faults.stac import stac_faults

        generate_demo_world(folder / "world", TINY_SPEC)
        return stac_faults(folder / "world")
    if name == "kills":
        from tests.faults.kills import chain_kills, model_kills, training_kills

        kinds = {
            "chain": (chain_kills, args.chain_kills),
            "training": (training_kills, args.training_kills),
            "model": (model_kills, args.model_kills),
        }
        rows = []
        for kind, (kill, count) in kinds.items():
            if count > 0:  # 0 leaves that kind out
                (folder / kind).mkdir()
                rows.append(kill(folder / kind, count, args.seed))
        return rows
    if name == "disk":
        from tests.faults.disk_full import disk_full

        return disk_full(folder)
    if name == "imagery":
        from tests.faults.imagery import imagery_faults

        return imagery_faults(folder)
    from tests.faults.concurrent import concurrent_runs

    return [concurrent_runs(folder, args.concurrent_trials, args.seed)]


def table(rows: list[dict]) -> str:
    """The Markdown table of the rows."""
    lines = [
        "| fault | times injected | survived | data lost | what the user sees |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        seen = row["what_the_user_sees"].replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {row['fault']} | {row['injected']} | {row['survived']} | {row['data_lost']} "
            f"| {seen} |"
        )
    return "\n".join(lines)


def write_doc(rows: list[dict], header: str) -> None:
    """Replace the table between the markers of ``docs/reliability.md``."""
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    atomic_write_text(DOC, f"{text[:start]}\n{header}\n\n{table(rows)}\n{text[end:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    parser.add_argument("--chain-kills", type=int, default=12)
    parser.add_argument("--training-kills", type=int, default=8)
    parser.add_argument("--model-kills", type=int, default=5, help="kills in the model assets")
    parser.add_argument("--concurrent-trials", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-doc", action="store_true", help="leave docs/reliability.md alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rows, seconds = [], {}
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        for name in args.only:
            started = time.monotonic()
            rows += [row.as_json() for row in run_family(name, Path(tmp), args)]
            seconds[name] = round(time.monotonic() - started, 1)
            log.info("%s faults done in %.0f s", name, seconds[name])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    if not args.no_doc:
        header = (
            f"Seed {args.seed}; families {', '.join(args.only)}; "
            + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
            + f"; load average {os.getloadavg()[0]:.1f} at the end."
        )
        write_doc(rows, header)
    return 0 if all(r["survived"] == r["injected"] and not r["data_lost"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
