"""kill -9 at seeded random moments inside the chain's steps and inside training, then a rerun.

Chain: the dataset assets of two partitions of the tiny demo world run in a subprocess (its own
session, so the `rustac serve` it starts dies with it) and are killed after a random delay, again
and again, each run a rerun of the killed one; a last rerun goes to the end. Expected: after
every kill, no partition recorded as materialised lacks its files; after the rerun, every output
byte-identical to an uninterrupted run in the same folder and no hidden temporary file left.

Training: ``python -m matter_model.train`` on a small synthetic store, a checkpoint every step,
killed and resumed the same way; expected: the checkpoint left by every kill loads, and the final
weights and loss history equal those of an uninterrupted run.

Model assets: after the dataset assets of the two partitions, `matter_pretrained` (training as a
Dagster Pipes subprocess, a checkpoint every step), `change_detection_eval`, then
`material_embeddings` and `change_maps` of both partitions run in a subprocess killed the same
way. Expected as for the chain, and no process of the killed group (the training subprocess
above all) left running.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from assets.jobs import DATASET_ASSETS, INFERENCE_ASSETS, MODEL_ASSETS
from assets.model import TRAINING
from tests.assets.demo_chain import REPO, tiny_config
from tests.faults.outcome import FaultRow
from tests.faults.outputs import differences, digests, leftovers, materialised_but_missing

log = logging.getLogger(__name__)

PARTITIONS = ("lombardy|2024-04-01", "beauce|2024-07-01")
# What the processes a run starts have in their command line: training, the local STAC server.
ORPHAN_MARKERS = ("matter_model.train", "rustac serve")


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A subprocess in its own session (killed as a group: the run and the servers it started)."""
    return subprocess.Popen(
        args,
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, timeout_s: float = 900) -> str:
    """Wait for a process; its stderr's tail if it failed, else empty."""
    _, err = process.communicate(timeout=timeout_s)
    return "" if process.returncode == 0 else err.decode(errors="replace")[-2000:]


def kill_after(process: subprocess.Popen, delay_s: float) -> bool:
    """SIGKILL the process's group after ``delay_s``; False if it had already ended."""
    try:
        process.wait(timeout=delay_s)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return True


def stop_orphan_servers(serving: Path, grace_s: float = 5) -> int:
    """The `rustac serve` processes still serving files under ``serving`` ``grace_s`` after a
    kill: SIGTERM them and return how many.

    The demo's STAC server runs in a session of its own, out of reach of a group kill; it is
    told to stop when its owner dies (``pipelines.stac.server``), so none should be left.
    """
    deadline = time.monotonic() + grace_s
    while (pids := _servers(serving)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    return len(pids)


def _servers(serving: Path) -> list[int]:
    """The pids of the `rustac serve` processes serving files under ``serving``."""
    return [
        pid
        for pid, _, command in _processes()
        if "rustac serve" in command and str(serving) in command
    ]


def _processes() -> list[tuple[int, int, str]]:
    """(pid, process group, command line) of every live process; zombies left out."""
    out = subprocess.run(
        ["ps", "-eww", "-o", "pid=,pgid=,stat=,args="], capture_output=True, text=True
    ).stdout
    found = []
    for line in out.splitlines():
        pid, pgid, stat, *args = line.split(None, 3)
        if not stat.startswith("Z"):
            found.append((int(pid), int(pgid), args[0] if args else ""))
    return found


def survivors(group: int, tmp: Path, timeout_s: float = 5) -> list[str]:
    """Processes still alive ``timeout_s`` after a group kill: those of process group ``group``,
    and any training or `rustac serve` working on files under ``tmp`` (zombies not counted)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [
            f"{pid} {command[:160]}"
            for pid, pgid, command in _processes()
            if pgid == group or (str(tmp) in command and any(m in command for m in ORPHAN_MARKERS))
        ]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _chain_env(tmp: Path, config: Path) -> dict[str, str]:
    home = tmp / "dagster_home"
    home.mkdir(exist_ok=True)
    return {"MATTER_CONFIG": str(config), "DAGSTER_HOME": str(home), "OMP_NUM_THREADS": "1"}


def _reset(tmp: Path) -> None:
    """Remove the outputs and the Dagster instance, keeping the generated world and config."""
    data = tmp / "data"
    for entry in data.iterdir():
        if entry.name != "demo_world":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    shutil.rmtree(tmp / "dagster_home", ignore_errors=True)


def chain_kills(tmp: Path, kills: int, seed: int) -> FaultRow:
    """Kill the dataset chain ``kills`` times at random moments, then rerun it to the end."""
    row = FaultRow("kill -9 inside the chain's steps, then a rerun", "")
    config = tiny_config(tmp)
    args = [sys.executable, "-m", "tests.faults.run_partition", *PARTITIONS]
    started = time.monotonic()
    error = finish(start(args, _chain_env(tmp, config)))
    full_s = time.monotonic() - started
    if error:
        raise RuntimeError(f"the uninterrupted chain failed: {error}")
    expected = digests(tmp / "data")
    _reset(tmp)
    rng = random.Random(seed)
    after_kill = []  # (materialised but missing, servers left running) per kill
    killed = 0
    while killed < kills:
        delay = rng.uniform(0.5, full_s)
        if not kill_after(start(args, _chain_env(tmp, config)), delay):
            continue  # it finished first: a rerun of a complete chain; draw another moment
        killed += 1
        orphans = stop_orphan_servers(tmp)
        missing = materialised_but_missing(tmp / "dagster_home", DATASET_ASSETS)
        after_kill.append((missing, orphans))
        log.info(
            "chain kill %d at %.1f s: %d missing, %d servers", killed, delay, len(missing), orphans
        )
    error = finish(start(args, _chain_env(tmp, config)))
    changed = differences(expected, digests(tmp / "data"))
    left = leftovers(tmp / "data")
    for missing, orphans in after_kill:
        ok = not missing and not orphans and not error and not changed and not left
        row.record(
            ok,
            data_lost=bool(missing or changed),
            why=f"materialised but missing {missing}; {orphans} STAC servers left running; "
            f"rerun error {error[-300:]!r}; {len(changed)} outputs differ {changed[:5]}; "
            f"leftovers {left[:5]}",
        )
    left_running = sum(orphans for _, orphans in after_kill)
    row.what_the_user_sees = (
        f"a killed run leaves no partition marked done without its files; the rerun restores all "
        f"{len(expected)} output files byte for byte, no hidden temporary file left; "
        f"{left_running} of {killed} kills left the local STAC server running"
    )
    return row


def _train_args(tmp: Path, out: Path) -> list[str]:
    """The training CLI on a small synthetic store, a checkpoint at every step."""
    import yaml

    from tests.matter_model.test_train import tiny_config as train_config
    from tests.matter_model.test_train import write_tiny_yaml

    store = tmp / "store"
    if not store.exists():
        _synthetic_store(store)
    config = train_config(store, out, steps=40, checkpoint_every=1)
    path = write_tiny_yaml(tmp / "train.yaml", config)
    yaml.safe_load(path.read_text())  # written for the CLI: fails here if not YAML
    return [sys.executable, "-m", "matter_model.train", "--config", str(path)] + [
        "--patch-store", str(store), "--out", str(out),
    ]  # fmt: skip


def _synthetic_store(root: Path) -> None:
    """test_train's store: striped textures, their gain-changed twins and other textures."""
    import numpy as np
    import pandas as pd

    from matter_model.bands import MATTER_BANDS
    from matter_model.patch_store import StoreInfo, write_shard
    from tests.matter_model.test_train import N_TRIPLETS, textures

    rng = np.random.default_rng(0)
    anchor = textures(rng, N_TRIPLETS)
    gain = rng.uniform(0.8, 1.2, (N_TRIPLETS, 1, 1, 1)).astype(np.float32)
    positive = anchor * gain + rng.normal(0, 0.01, anchor.shape).astype(np.float32)
    table = pd.DataFrame({"region": ["synthetic"] * N_TRIPLETS})
    info = StoreInfo(MATTER_BANDS, 32)
    write_shard(root, "s0", info, anchor, positive, textures(rng, N_TRIPLETS), table)


def _weights(path: Path) -> dict:
    from matter_model.checkpoint import load_checkpoint

    return load_checkpoint(path)["model"]


def training_kills(tmp: Path, kills: int, seed: int) -> FaultRow:
    """Kill training ``kills`` times at random moments (a checkpoint every step), resume each
    time, and compare the end with an uninterrupted run."""
    import torch

    from matter_model.checkpoint import CheckpointError, load_checkpoint

    row = FaultRow("kill -9 during training and its checkpoint writes, then --resume", "")
    env = {"OMP_NUM_THREADS": "1"}
    reference = tmp / "uninterrupted"
    started = time.monotonic()
    process, first_checkpoint_s = start(_train_args(tmp, reference), env), None
    while process.poll() is None:
        if first_checkpoint_s is None and (reference / "checkpoint.pt").exists():
            first_checkpoint_s = time.monotonic() - started
        time.sleep(0.05)
    full_s = time.monotonic() - started
    error = finish(process)
    # Kills drawn from just before the first checkpoint to the end: the start-up is imports.
    earliest = 0.8 * (first_checkpoint_s or 0.5)
    if error:
        raise RuntimeError(f"uninterrupted training failed: {error}")
    out = tmp / "killed"
    rng = random.Random(seed)
    after_kill = []
    while len(after_kill) < kills:
        args = _train_args(tmp, out) + (["--resume"] if (out / "checkpoint.pt").exists() else [])
        delay = rng.uniform(earliest, full_s)
        if not kill_after(start(args, env), delay):
            shutil.rmtree(out)  # it finished first: start over so the next kill lands mid-run
            continue
        try:
            saved = (out / "checkpoint.pt").exists()
            step = load_checkpoint(out / "checkpoint.pt")["step"] if saved else 0
            after_kill.append(f"killed at {delay:.1f} s, checkpoint at step {step}")
        except CheckpointError as err:
            after_kill.append(f"CORRUPT: {err}")
    resume = ["--resume"] if (out / "checkpoint.pt").exists() else []  # none if killed early
    error = finish(start(_train_args(tmp, out) + resume, env))
    same = not error and all(
        torch.equal(a, b)
        for a, b in zip(
            _weights(reference / "checkpoint.pt").values(),
            _weights(out / "checkpoint.pt").values(),
            strict=True,
        )
    )
    if same:
        losses = [
            json.loads((d / "metrics.json").read_text())["loss_history"] for d in (reference, out)
        ]
        same = losses[0] == losses[1]
    left = leftovers(out)
    for state in after_kill:
        corrupt = state.startswith("CORRUPT")
        row.record(
            same and not left and not corrupt,
            data_lost=corrupt or not same,
            why=f"{state}; resume error {error[-300:]!r}; same weights and losses {same}; "
            f"leftovers {left}",
        )
    steps = [state.split("step ")[-1] for state in after_kill if "step " in state]
    row.what_the_user_sees = (
        "every kill leaves a loadable checkpoint; --resume ends with the uninterrupted run's "
        f"weights and loss history, bit for bit (kills left checkpoints of steps {steps})"
    )
    return row


# Training long enough for kills to land in it, a checkpoint at every step (so during and between
# checkpoint writes): about 10 s of the model assets' 30 s on the tiny world.
MODEL_TRAINING = {"steps": 24, "batch_size": 4, "num_workers": 0, "checkpoint_every": 1}


def _snapshot(tmp: Path, to: Path) -> None:
    """Copy the outputs (not the generated world) and the Dagster instance to ``to``."""
    ignore = shutil.ignore_patterns("demo_world")
    shutil.copytree(tmp / "data", to / "data", ignore=ignore)
    shutil.copytree(tmp / "dagster_home", to / "dagster_home")


def _restore(tmp: Path, snapshot: Path) -> None:
    """Put the outputs and the Dagster instance back as :func:`_snapshot` saved them."""
    _reset(tmp)
    for entry in (snapshot / "data").iterdir():
        shutil.copytree(entry, tmp / "data" / entry.name) if entry.is_dir() else shutil.copy2(
            entry, tmp / "data"
        )
    shutil.copytree(snapshot / "dagster_home", tmp / "dagster_home")


def killed_steps(home: Path) -> list[str]:
    """The steps the newest run of the Dagster instance at ``home`` started and did not end:
    where a kill landed."""
    import dagster as dg

    events = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}
    events.add(dg.DagsterEventType.STEP_FAILURE)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(limit=1)
        if not runs:
            return []
        started: dict[str, bool] = {}
        for record in instance.all_logs(runs[0].run_id, of_type=events):
            step = record.dagster_event.step_key
            started[step] = record.dagster_event.event_type == dg.DagsterEventType.STEP_START
    return [step for step, running in started.items() if running]


def _recorded_checkpoint_step(home: Path, checkpoint: Path) -> int | None:
    """The step of the checkpoint if the instance records `matter_pretrained` as materialised;
    None if it does not, -1 if the checkpoint does not load."""
    import dagster as dg

    from matter_model.checkpoint import CheckpointError, load_checkpoint

    with dg.DagsterInstance.from_config(str(home)) as instance:
        if instance.get_latest_materialization_event(dg.AssetKey("matter_pretrained")) is None:
            return None
    try:
        return int(load_checkpoint(checkpoint)["step"])
    except (CheckpointError, FileNotFoundError):
        return -1


def model_kills(tmp: Path, kills: int, seed: int) -> FaultRow:
    """Kill the model and inference assets ``kills`` times at random moments, then rerun them."""
    row = FaultRow("kill -9 inside the model assets (training via Pipes), then a rerun", "")
    config = tiny_config(tmp, training={"overrides": MODEL_TRAINING})
    env = _chain_env(tmp, config)
    error = finish(start([sys.executable, "-m", "tests.faults.run_partition", *PARTITIONS], env))
    if error:
        raise RuntimeError(f"the dataset assets failed: {error}")
    stop_orphan_servers(tmp)
    snapshot = tmp / "after_dataset"
    _snapshot(tmp, snapshot)
    args = [sys.executable, "-m", "tests.faults.run_model", *PARTITIONS]
    checkpoint = tmp / "data" / "models" / "matter" / "checkpoint.pt"
    first = checkpoint.parent / TRAINING / "checkpoint.pt"  # training's, before it replaces it
    started, training_s = time.monotonic(), None
    process = start(args, _chain_env(tmp, config))
    while process.poll() is None:
        if training_s is None and (first.exists() or checkpoint.exists()):
            training_s = time.monotonic() - started
        time.sleep(0.05)
    full_s = time.monotonic() - started
    error = finish(process)
    if error:
        raise RuntimeError(f"the uninterrupted model assets failed: {error}")
    expected = digests(tmp / "data")
    _restore(tmp, snapshot)
    # Kills drawn from just before the first checkpoint to the end: before it, imports only.
    earliest = 0.8 * (training_s or 0.5)
    rng = random.Random(seed)
    after_kill = []
    while len(after_kill) < kills:
        delay = rng.uniform(earliest, full_s)
        process = start(args, _chain_env(tmp, config))
        if not kill_after(process, delay):
            _restore(tmp, snapshot)  # it finished first: start over so the next kill lands mid-run
            continue
        alive = survivors(process.pid, tmp)
        steps = killed_steps(tmp / "dagster_home") or ["between steps"]
        missing = materialised_but_missing(tmp / "dagster_home", MODEL_ASSETS + INFERENCE_ASSETS)
        recorded = _recorded_checkpoint_step(tmp / "dagster_home", checkpoint)
        after_kill.append((delay, steps, alive, missing, recorded))
        log.info("model kill at %.1f s in %s: %d missing, %d alive", delay, steps, len(missing),
                 len(alive))  # fmt: skip
    error = finish(start(args, _chain_env(tmp, config)))
    changed = differences(expected, digests(tmp / "data"))
    left = leftovers(tmp / "data")
    stale = 0
    for delay, steps, alive, missing, recorded in after_kill:
        # Recorded as materialised, the model must be a finished training, not one in progress.
        half_trained = recorded is not None and recorded != MODEL_TRAINING["steps"]
        stale += int(half_trained)
        ok = not (missing or alive or half_trained or error or changed or left)
        row.record(
            ok,
            data_lost=bool(missing or changed),
            why=f"killed at {delay:.1f} s in {steps}: materialised but missing {missing}; "
            f"still running {alive}; recorded model's checkpoint at step {recorded} of "
            f"{MODEL_TRAINING['steps']}; rerun error {error[-300:]!r}; "
            f"{len(changed)} outputs differ {changed[:5]}; leftovers {left[:5]}",
        )
    where = [f"{', '.join(steps)} ({delay:.0f} s)" for delay, steps, *_ in after_kill]
    alive = sum(bool(a) for _, _, a, _, _ in after_kill)
    row.what_the_user_sees = (
        f"kills landed in {'; '.join(where)}; {alive} left a process of the killed run running; "
        f"after {stale} the instance recorded matter_pretrained as materialised while its "
        f"checkpoint was a retraining in progress; the rerun restores "
        f"{len(expected) - len(changed)} of {len(expected)} output files (metrics.json without "
        f"its timings) byte for byte, {len(left)} hidden temporary files left"
    )
    return row
