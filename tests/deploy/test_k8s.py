"""The Kubernetes path as configuration, validated without a cluster: the instance with the
k8s run launcher, the k8s_job_executor's run config, and training as a GPU pod through
Dagster Pipes (PipesK8sClient) built from the project configuration."""

from __future__ import annotations

from pathlib import Path

import kubernetes
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s import K8sRunLauncher, PipesK8sClient
from dagster_k8s.pipes import build_pod_body

from assets.config import ConfigError
from assets.executors import executor_from_env
from assets.k8s import PROJECT_ROOT, pipes_client, training_pod
from tests.deploy.code_location import probe_definitions

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _training() -> dict:
    """``training`` of the deployment's project config, switched to the Kubernetes launcher."""
    config = yaml.safe_load((DOCKER / "matter.yaml").read_text())
    return {**config["training"], "launcher": "kubernetes"}


def test_k8s_instance_config_loads_with_the_run_launcher_and_the_deployment_storage() -> None:
    config, _ = dagster_instance_config(str(DOCKER / "k8s"))
    deployment, _ = dagster_instance_config(str(DOCKER))
    assert config["storage"] == deployment["storage"]
    assert config["run_coordinator"] == deployment["run_coordinator"]
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    checked = validate_config(K8sRunLauncher.config_type(), launcher["config"])
    assert checked.success, checked.errors
    assert launcher["config"]["env_secrets"] == ["matter-postgres"]


def test_k8s_job_executor_run_config_validates_against_the_jobs() -> None:
    run_config = yaml.safe_load((DOCKER / "k8s" / "run_config.yaml").read_text())
    result = probe_definitions(
        {"MATTER_EXECUTOR": "k8s"},
        "[(defs.resolve_job_def(j).executor_def.name, "
        f"__import__('dagster').validate_run_config(defs.resolve_job_def(j), {run_config!r}) "
        "is not None) for j in ('patch_dataset', 'matter_chain')]",
    )
    assert result == [["k8s", True], ["k8s", True]]


def test_an_unknown_executor_is_an_error_naming_the_known_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MATTER_EXECUTOR", "spark")
    with pytest.raises(ValueError, match=r"MATTER_EXECUTOR='spark'.*\['dask', 'k8s'"):
        executor_from_env()


def test_training_pod_asks_for_the_gpu_and_mounts_the_data_store_where_the_code_location_has_it(
    tmp_path: Path,
) -> None:
    pod = training_pod(_training(), tmp_path)
    local = [
        "/venv/bin/python",
        "-m",
        "matter_model.train",
        "--config",
        str(PROJECT_ROOT / "matter_model" / "configs" / "default.yaml"),
        "--patch-store",
        str(tmp_path / "patches"),
    ]
    command = pod.command(local)
    assert command == [
        "python",
        "-m",
        "matter_model.train",
        "--config",
        "matter_model/configs/default.yaml",
        "--patch-store",
        str(tmp_path / "patches"),
    ]
    # The pod exactly as PipesK8sClient would submit it, as a Kubernetes API object.
    body = build_pod_body(
        pod_name="matter-train",
        image=pod.image,
        command=command,
        env_vars={"DAGSTER_PIPES_CONTEXT": "e30="},
        base_pod_meta=None,
        base_pod_spec=pod.pod_spec(),
    )
    assert isinstance(body, kubernetes.client.V1Pod)
    container = body.spec.containers[0]
    assert container.image == "matter-train:0.1.0"
    assert container.command == command
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.volume_mounts[0].mount_path == str(tmp_path)
    assert body.spec.volumes[0].persistent_volume_claim.claim_name == "matter-data"
    assert body.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert body.spec.tolerations[0].key == "nvidia.com/gpu"
    assert body.spec.restart_policy == "Never"


def test_pipes_client_follows_the_launcher_without_contacting_a_cluster(tmp_path: Path) -> None:
    assert isinstance(pipes_client(_training(), tmp_path), PipesK8sClient)
    subprocess_training = {**_training(), "launcher": "subprocess"}
    assert not isinstance(pipes_client(subprocess_training, tmp_path), PipesK8sClient)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": None}, "training.kubernetes.image is missing"),
        ({"data_volume_claim": ""}, "training.kubernetes.data_volume_claim is missing"),
        ({"gpu": 1}, r"unknown keys \['gpu'\]"),
    ],
)
def test_bad_kubernetes_settings_fail_when_the_code_location_loads(
    tmp_path: Path, change: dict, message: str
) -> None:
    training = _training()
    training["kubernetes"] = {**training["kubernetes"], **change}
    with pytest.raises(ConfigError, match=message):
        pipes_client(training, tmp_path)


def test_an_unknown_launcher_is_an_error() -> None:
    with pytest.raises(ConfigError, match="training.launcher is 'slurm'"):
        pipes_client({"launcher": "slurm"}, Path("/data"))


def test_the_code_location_picks_the_k8s_pipes_client_when_configured(tmp_path: Path) -> None:
    config = yaml.safe_load((DOCKER / "matter.yaml").read_text())
    config["training"]["launcher"] = "kubernetes"
    config["storage"]["root"] = str(tmp_path / "data")
    path = tmp_path / "matter.yaml"
    path.write_text(yaml.safe_dump(config))
    client = probe_definitions(
        {"MATTER_CONFIG": str(path)}, "type(defs.resources['pipes']).__name__"
    )
    assert client == "PipesK8sClient"
