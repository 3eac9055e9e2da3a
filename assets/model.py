"""Model assets: MATTER pretrained on every materialised patch shard, launched via Dagster Pipes."""

import sys
from pathlib import Path

import dagster as dg

from assets.k8s import run_training
from assets.partitions import CONFIG
from assets.previews import png_metadata
from assets.resources import DataStore

GROUP = "model"
CONFIGS = Path(__file__).resolve().parents[1] / "matter_model" / "configs"


def training_config() -> Path:
    """The training YAML: a name of ``matter_model/configs/`` (``demo``) or a path."""
    name = str(CONFIG.training.get("config", "demo"))
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
        str(store.model_dir),
    ]
    for key, value in (CONFIG.training.get("overrides") or {}).items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    return command


@dg.asset(group_name=GROUP, deps=["patch_triplets"], kinds={"pytorch"})
def matter_pretrained(
    context: dg.AssetExecutionContext, store: DataStore, pipes: dg.ResourceParam[dg.PipesClient]
) -> dg.MaterializeResult:
    """The MATTER network pretrained on every shard of the patch store (a checkpoint file).

    Training runs as a subprocess, or as a pod on a Kubernetes GPU node with
    ``training.launcher: kubernetes`` (the same command), and reports its logs and metrics back
    through Dagster Pipes.
    """
    invocation = run_training(
        pipes, context, training_command(store), CONFIG.training, store.path()
    )
    result = invocation.get_materialize_result()
    curve = store.model_dir / "loss_curve.png"
    return dg.MaterializeResult(
        metadata={
            **result.metadata,
            "checkpoint_path": dg.MetadataValue.path(str(store.model_dir / "checkpoint.pt")),
            **(png_metadata(curve.read_bytes(), curve, "loss_curve") if curve.exists() else {}),
        }
    )
