"""Where `matter_pretrained` trains: a local subprocess, or a Kubernetes GPU pod via Dagster Pipes.

``training.launcher`` in the project configuration picks it (``subprocess``, the default, or
``kubernetes``); ``training.kubernetes`` describes the pod: the training image
(``docker/Dockerfile.train``), the GPUs it asks for, where it may run, and the volume claim of
the data store, mounted at the same path as in the code location so that every path in the
training command means the same file in the pod.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_k8s import PipesK8sClient

from assets.config import ConfigError, TrainingSettings

LAUNCHERS = ("subprocess", "kubernetes")
# Keys of ``training.kubernetes`` that configure the client's cluster access, not the pod.
CLIENT_KEYS = frozenset({"load_incluster_config", "kubeconfig_file", "poll_interval_s"})
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The training image's working directory: `matter_model/` lies under it (docker/Dockerfile.train).
IMAGE_WORKDIR = "/opt/matter"


@dataclass(frozen=True)
class TrainingPod:
    """The Kubernetes pod that trains MATTER: image, GPUs, placement and the data-store volume."""

    image: str
    data_volume_claim: str
    data_mount: str
    gpus: int = 1
    namespace: str | None = None
    service_account: str | None = None
    node_selector: Mapping[str, str] | None = None
    tolerations: Sequence[Mapping[str, Any]] = ()
    memory: str = "32Gi"
    cpu: str = "8"

    @classmethod
    def from_config(cls, kubernetes: Mapping[str, Any], data_mount: str) -> "TrainingPod":
        """Validate ``training.kubernetes``; a missing or unknown key is an error naming it."""
        known = {f for f in cls.__dataclass_fields__ if f != "data_mount"}
        unknown = sorted(set(kubernetes) - known)
        if unknown:
            raise ConfigError(
                f"training.kubernetes: unknown keys {unknown}; "
                f"valid keys are {sorted(known | CLIENT_KEYS)}"
            )
        for key in ("image", "data_volume_claim"):
            if not kubernetes.get(key):
                raise ConfigError(
                    f"training.kubernetes.{key} is missing: training.launcher is kubernetes, "
                    f"which needs the training image and the data store's volume claim"
                )
        if int(kubernetes.get("gpus", 1)) < 0:
            raise ConfigError("training.kubernetes.gpus must be 0 (CPU only) or more")
        return cls(data_mount=data_mount, **kubernetes)

    def pod_spec(self) -> dict[str, Any]:
        """The ``base_pod_spec`` of `PipesK8sClient.run`: resources, placement, the volume."""
        limits = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus:
            limits["nvidia.com/gpu"] = str(self.gpus)
        spec: dict[str, Any] = {
            "restart_policy": "Never",
            "containers": [
                {
                    "name": "train",
                    "working_dir": IMAGE_WORKDIR,
                    "resources": {"requests": dict(limits), "limits": limits},
                    "volume_mounts": [{"name": "matter-data", "mount_path": self.data_mount}],
                }
            ],
            "volumes": [
                {
                    "name": "matter-data",
                    "persistent_volume_claim": {"claim_name": self.data_volume_claim},
                }
            ],
        }
        if self.service_account:
            spec["service_account_name"] = self.service_account
        if self.node_selector:
            spec["node_selector"] = dict(self.node_selector)
        if self.tolerations:
            spec["tolerations"] = [dict(t) for t in self.tolerations]
        return spec

    def command(self, local_command: Sequence[str]) -> list[str]:
        """The local training command as the pod runs it: its python, packaged configs by the
        image's relative path; data-store paths stay as they are (the volume is mounted there)."""
        pod_command = ["python"]
        for arg in local_command[1:]:
            path = Path(arg)
            inside = path.is_absolute() and path.is_relative_to(PROJECT_ROOT)
            pod_command.append(str(path.relative_to(PROJECT_ROOT)) if inside else arg)
        return pod_command


Training = Mapping[str, Any] | TrainingSettings


def _as_mapping(training: Training) -> Mapping[str, Any]:
    return training.model_dump() if isinstance(training, TrainingSettings) else training


def launcher(training: Training) -> str:
    """``training.launcher``, checked."""
    name = str(_as_mapping(training).get("launcher", "subprocess"))
    if name not in LAUNCHERS:
        raise ConfigError(f"training.launcher is {name!r}; use one of {list(LAUNCHERS)}")
    return name


def pipes_client(training: Training, data_root: Path) -> dg.PipesClient:
    """The Pipes client of the configured launcher, its pod settings checked when the code
    location loads (no cluster is contacted until a run)."""
    if launcher(training) == "subprocess":
        return dg.PipesSubprocessClient()
    training_pod(training, data_root)
    kubernetes = _as_mapping(training).get("kubernetes") or {}
    return PipesK8sClient(
        load_incluster_config=bool(kubernetes.get("load_incluster_config", True)),
        kubeconfig_file=kubernetes.get("kubeconfig_file"),
        poll_interval=float(kubernetes.get("poll_interval_s", 10.0)),
    )


def training_pod(training: Training, data_root: Path) -> TrainingPod:
    """The pod of ``training.kubernetes``; cluster-access keys belong to the client, not the pod."""
    kubernetes = _as_mapping(training).get("kubernetes") or {}
    pod_keys = {k: v for k, v in kubernetes.items() if k not in CLIENT_KEYS}
    return TrainingPod.from_config(pod_keys, str(data_root))


def run_training(
    pipes: dg.PipesClient,
    context: dg.AssetExecutionContext,
    command: list[str],
    training: Training,
    data_root: Path,
) -> dg.PipesClientCompletedInvocation:
    """Run the training command under the configured launcher and wait for its results."""
    if isinstance(pipes, PipesK8sClient):
        pod = training_pod(training, data_root)
        return pipes.run(
            context=context,
            image=pod.image,
            command=pod.command(command),
            namespace=pod.namespace,
            base_pod_spec=pod.pod_spec(),
        )
    if isinstance(pipes, dg.PipesSubprocessClient):
        return pipes.run(command=command, context=context)
    raise TypeError(f"no training launch for a {type(pipes).__name__}; see training.launcher")
