"""Model assets: MATTER pretrained on every materialised patch shard, launched via Dagster Pipes."""

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import dagster as dg

from assets.k8s import run_training
from assets.logs import forward_project_logs
from assets.partitions import CONFIG
from assets.previews import png_metadata
from assets.resources import DataStore
from matter_model.atomic_io import atomic_write_text
from matter_model.export import export
from matter_model.pretrained import PRODUCT_LEVELS

GROUP = "model"
CONFIGS = Path(__file__).resolve().parents[1] / "matter_model" / "configs"
EXPORT = "export"  # beside the checkpoint: model.safetensors, model_card.json, README.md
# Training writes its checkpoints here, and its files replace the model's once it has finished:
# a killed (re)training never leaves a half-trained checkpoint where the last model was.
TRAINING = "training"
TRAINED = ("loss_curve.png", "metrics.json", "checkpoint.pt")  # the checkpoint last

log = logging.getLogger(__name__)


def training_config() -> Path:
    """The training YAML: a name of ``matter_model/configs/`` (``demo``) or a path."""
    name = CONFIG.training.config
    packaged = CONFIGS / f"{name}.yaml"
    path = packaged if packaged.exists() else Path(name)
    if not path.exists():
        known = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
        raise FileNotFoundError(
            f"training config {name!r} is neither one of {known} nor an existing file; "
            "fix `training.config` in the project config"
        )
    return path


def training_command(store: DataStore) -> list[str]:
    """`python -m matter_model.train` with the config, the store, and the configured overrides."""
    command = [
        sys.executable,
        "-m",
        "matter_model.train",
        "--config",
        str(training_config()),
        "--patch-store",
        str(store.patch_store),
        "--out",
        str(store.model_dir / TRAINING),
    ]
    for setting in CONFIG.training.override_settings():
        command += ["--set", setting]
    return command


def start_training(store: DataStore) -> None:
    """Empty the training folder (what a killed run left there); with ``resume`` in the
    overrides, put the model's checkpoint there for the run to continue."""
    work = store.model_dir / TRAINING
    if work.exists():
        log.info("removing %s, left by a training run that did not finish", work)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    checkpoint = store.model_dir / "checkpoint.pt"
    if CONFIG.training.overrides.get("resume") and checkpoint.exists():
        shutil.copyfile(checkpoint, work / "checkpoint.pt")


def publish_training(store: DataStore) -> None:
    """Move a finished training's checkpoint, metrics and loss curve over the model's (each
    rename atomic, the checkpoint last) and remove the training folder."""
    work = store.model_dir / TRAINING
    metrics = work / "metrics.json"
    if metrics.exists():  # it names the checkpoint where it will be, not where it was written
        values = json.loads(metrics.read_text())
        values["checkpoint"] = str(store.model_dir / "checkpoint.pt")
        atomic_write_text(metrics, json.dumps(values, indent=2))
    for name in TRAINED:
        if (work / name).exists():
            os.replace(work / name, store.model_dir / name)
    shutil.rmtree(work)


def product_level_of(collection: str) -> str:
    """The product level a STAC collection holds (``sentinel-2-l2a``: ``L2A``)."""
    found = [level for level in PRODUCT_LEVELS if level.lower() in collection.lower()]
    if len(found) != 1:
        raise ValueError(
            f"cannot tell the product level of STAC collection {collection!r} (one of "
            f"{list(PRODUCT_LEVELS)} in its name); fix `stac.collection` in the project config"
        )
    return found[0]


def export_model(store: DataStore) -> dict:
    """Export the trained checkpoint's weights and model card into ``models/matter/export``:
    the product level from the STAC collection, the GSD from the grid."""
    return export(
        store.model_dir / "checkpoint.pt",
        store.model_dir / EXPORT,
        product_level_of(CONFIG.stac.collection),
        gsd_m=CONFIG.grid.resolution_m,
        patch_store=store.patch_store,
    )


@dg.asset(group_name=GROUP, deps=["patch_triplets"], kinds={"pytorch"})
def matter_pretrained(
    context: dg.AssetExecutionContext, store: DataStore, pipes: dg.ResourceParam[dg.PipesClient]
) -> dg.MaterializeResult:
    """The MATTER network pretrained on every shard of the patch store (a checkpoint file).

    Training writes into ``models/matter/training`` and its files replace the model's when it
    has finished, so a killed run leaves the last model whole; the rerun starts over. It runs as
    a subprocess, or as a pod on a Kubernetes GPU node with
    ``training.launcher: kubernetes`` (the same command), and reports its logs and metrics back
    through Dagster Pipes. The weights are then exported with their model card
    (``models/matter/export``) for ``matter_model.load``.
    """
    start_training(store)
    invocation = run_training(
        pipes, context, training_command(store), CONFIG.training, store.path()
    )
    result = invocation.get_materialize_result()
    publish_training(store)
    with forward_project_logs(context):
        card = export_model(store)
    curve = store.model_dir / "loss_curve.png"
    return dg.MaterializeResult(
        metadata={
            **result.metadata,
            "checkpoint_path": dg.MetadataValue.path(str(store.model_dir / "checkpoint.pt")),
            "export_path": dg.MetadataValue.path(str(store.model_dir / EXPORT)),
            "model_inputs": dg.MetadataValue.json(card["inputs"]),
            **(png_metadata(curve.read_bytes(), curve, "loss_curve") if curve.exists() else {}),
        }
    )
