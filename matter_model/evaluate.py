"""Downstream evaluation from the command line: one subcommand per task, metrics as JSON.

``python -m matter_model.evaluate TASK --root DIR [--checkpoint PATH] --out metrics.json
[--device cpu|cuda] [task options]``; ``python -m matter_model.evaluate TASK --help`` lists a
task's options. Each task is a module of :mod:`matter_model.downstream` exposing
``add_arguments(parser)`` and ``run(args) -> dict``; :data:`TASKS` maps the task name to it and
the module is imported only when its task is asked for.

The options every task shares, and the checkpoint resolution, live here: without
``--checkpoint`` the best local checkpoint is used (the real-data pretraining's, else
``make demo``'s; see :data:`LOCAL_CHECKPOINTS`) and the run says which; with none, it stops
with an error that says how to make one. The metrics are written to ``--out`` atomically.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from matter_model.atomic_io import atomic_write_text
from matter_model.logs import configure_cli_logging

# Named, not __name__: under `python -m matter_model.evaluate` that is "__main__".
logger = logging.getLogger("matter_model.evaluate")

TASKS: dict[str, str] = {
    "oscd": "matter_model.downstream.oscd",
    "oscd-finetune": "matter_model.downstream.oscd_finetune",
    "bigearthnet": "matter_model.downstream.bigearthnet",
    "spacenet": "matter_model.downstream.spacenet",
}

REPO = Path(__file__).resolve().parents[1]
# Local checkpoints, best first, relative to the repository root, with what made them.
LOCAL_CHECKPOINTS: tuple[tuple[str, str], ...] = (
    (".demo/oscd/model/checkpoint.pt", "the real-imagery pretraining (make oscd-pretrain)"),
    (".demo/data/models/matter/checkpoint.pt", "make demo"),
)


class EvaluationError(RuntimeError):
    """The command line cannot run: an unknown task, a missing module or checkpoint."""


def load_task(name: str) -> ModuleType:
    """The module of task ``name``; an unknown or missing one is a clear error."""
    if name not in TASKS:
        raise EvaluationError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    try:
        module = importlib.import_module(TASKS[name])
    except ModuleNotFoundError as exc:
        if exc.name is None or not TASKS[name].startswith(exc.name):
            raise
        raise EvaluationError(
            f"task {name!r} is registered but its module {TASKS[name]} is not installed"
        ) from exc
    missing = [f for f in ("add_arguments", "run") if not callable(getattr(module, f, None))]
    if missing:
        raise EvaluationError(f"task module {TASKS[name]} lacks {missing}")
    return module


def resolve_checkpoint(
    checkpoint: Path | None,
    candidates: Sequence[tuple[str, str]] = LOCAL_CHECKPOINTS,
    root: Path = REPO,
) -> Path:
    """``checkpoint`` if given (it must exist), else the first local checkpoint that exists."""
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise EvaluationError(f"--checkpoint {checkpoint} does not exist")
        return checkpoint
    for relative, origin in candidates:
        path = root / relative
        if path.is_file():
            logger.info("no --checkpoint given: using %s from %s", path, origin)
            return path
    looked = ", ".join(relative for relative, _ in candidates)
    raise EvaluationError(
        f"no --checkpoint given and no local checkpoint found (looked for {looked} under "
        f"{root}): run `make oscd-pretrain` or `make demo`, or pass --checkpoint PATH"
    )


def build_parser(task: str, module: ModuleType) -> argparse.ArgumentParser:
    """The parser of one task: the shared options, then the task's own."""
    parser = argparse.ArgumentParser(
        prog=f"python -m matter_model.evaluate {task}", description=module.__doc__
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="a MATTER checkpoint (default: the best local one)"
    )
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    module.add_arguments(parser)
    return parser


def evaluate(argv: Sequence[str]) -> dict[str, Any]:
    """Run the task that ``argv`` names and write its metrics; return them."""
    if not argv or argv[0] in ("-h", "--help"):
        raise EvaluationError(
            f"name a task first: {' | '.join(TASKS)} (then --help for its options)"
        )
    module = load_task(argv[0])
    args = build_parser(argv[0], module).parse_args(list(argv[1:]))
    args.checkpoint = resolve_checkpoint(args.checkpoint)
    metrics = module.run(args)
    atomic_write_text(args.out, json.dumps(metrics, indent=2))
    logger.info("metrics written to %s", args.out)
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    """The command line (see the module docstring); errors end it with status 1."""
    from matter_model.checkpoint import CheckpointError  # torch: only once a task runs

    configure_cli_logging()
    try:
        evaluate(sys.argv[1:] if argv is None else argv)
    except (EvaluationError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
