"""The deployment files as far as they can be checked without a Docker engine: the Dockerfiles
pass hadolint, the compose file parses, mounts only files that exist and takes every secret from
the environment, and the deployment's dagster.yaml loads with Dagster's instance schema."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config

from assets.config import parse_config

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
HADOLINT = Path(sys.executable).with_name("hadolint")
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")
DEPLOY_ENV = {
    "DAGSTER_PG_HOST": "127.0.0.1",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-real-password",
    "DAGSTER_MAX_CONCURRENT_RUNS": "4",
}


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.train"])
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    if not HADOLINT.exists():
        pytest.skip("hadolint is absent: install the test extra (pip install -e '.[test]')")
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKER / dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_images_run_as_a_non_root_user_from_a_pinned_base() -> None:
    for dockerfile in ("Dockerfile", "Dockerfile.train"):
        text = (DOCKER / dockerfile).read_text()
        bases = re.findall(r"^FROM (\S+)", text, flags=re.M)
        assert bases and all(re.search(r":\d+\.\d+\.\d+-", b) for b in bases), bases
        users = re.findall(r"^USER (\S+)", text, flags=re.M)
        assert users and users[-1].split(":")[0] not in ("0", "root"), dockerfile


def _final_stage(dockerfile: str) -> list[str]:
    """The instructions of the image's last stage, one logical line each (``\\`` joined)."""
    text = (DOCKER / dockerfile).read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    last_from = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    return lines[last_from:]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.train"])
def test_the_user_switch_comes_after_every_install_and_is_never_undone(dockerfile: str) -> None:
    stage = _final_stage(dockerfile)
    keywords = [ln.split()[0].upper() for ln in stage]
    assert "USER" in keywords, f"{dockerfile}: its final stage has no USER directive"
    user_at = keywords.index("USER")
    runs_after = [ln for ln in stage[user_at:] if ln.upper().startswith("RUN ")]
    assert not runs_after, f"{dockerfile}: RUN after USER (installs must run before): {runs_after}"
    users = [ln.split()[1].split(":")[0] for ln in stage if ln.upper().startswith("USER ")]
    assert not {"0", "root"} & set(users), f"{dockerfile}: switches back to root: {users}"


def test_compose_starts_postgres_code_location_webserver_and_daemon() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "code-location", "webserver", "daemon"}
    commands = {name: " ".join(s.get("command", [])) for name, s in services.items()}
    assert "dagster api grpc" in commands["code-location"]
    assert "-m assets.definitions" in commands["code-location"]
    assert commands["webserver"].startswith("dagster-webserver")
    assert commands["daemon"].startswith("dagster-daemon run")
    for name in ("webserver", "daemon"):
        assert services[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_compose_references_only_files_that_exist() -> None:
    compose = _compose()
    named_volumes = set(compose["volumes"])
    assert "matter-data" in named_volumes
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context}"
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']}"
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DOCKER / source).is_file(), f"{name} mounts missing {source}"
            else:
                assert source in named_volumes, f"{name}: volume {source} is not declared"
        mounted = {v.split(":")[1] for v in service.get("volumes", [])}
        if name != "postgres":
            assert "/data" in mounted, f"{name} lacks the data store volume"
            config = service["environment"]["MATTER_CONFIG"]
            assert config in mounted, f"{name}: MATTER_CONFIG {config} is not mounted"
    matter = DOCKER / "matter.yaml"
    assert parse_config(yaml.safe_load(matter.read_text()), matter).storage.root == "/data"


def test_compose_takes_every_secret_from_the_environment_and_requires_the_password() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    required = {m[0]: m[2] for m in INTERPOLATION.findall(text) if m[1] == "?"}
    assert "POSTGRES_PASSWORD" in required
    assert "POSTGRES_PASSWORD" in required["POSTGRES_PASSWORD"]  # the message names the setting
    for service in _compose()["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|KEY|SECRET|TOKEN", key):
                assert INTERPOLATION.fullmatch(str(value)), f"{key} is written in the file"


def test_compose_has_no_default_secret_values() -> None:
    """A secret is required (``${VAR:?message}``) or optional and empty, never defaulted."""
    text = (DOCKER / "compose.yaml").read_text()
    for name, kind, default in INTERPOLATION.findall(text):
        if re.search(r"PASSWORD|SECRET", name):
            assert kind == "?", f"${{{name}}} must be required with ${{{name}:?message}}"
        if re.search(r"PASSWORD|KEY|SECRET|TOKEN", name) and kind == "-":
            assert default == "", f"${{{name}}} has the default value {default!r}: remove it"


def test_compose_publishes_no_database_port_and_binds_others_to_loopback() -> None:
    services = _compose()["services"]
    assert "ports" not in services["postgres"], "PostgreSQL's port must not be published"
    for name, service in services.items():
        for port in service.get("ports", []):
            spec = port if isinstance(port, str) else f"{port.get('host_ip', '')}:"
            assert spec.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
            assert not spec.endswith(":5432"), f"{name} publishes PostgreSQL's port"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(distributions: set[str]) -> set[str]:
    """The distributions installed by ``distributions`` and their requirements, transitively."""
    seen: set[str] = set()
    todo = [_canonical(d) for d in distributions]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [
            _canonical(re.split(r"[ ;<>=!~\[(]", r)[0]) for r in requirements if "extra ==" not in r
        ]
    return seen


def test_training_image_requirements_cover_its_imports_at_the_project_pins() -> None:
    pins = dict(
        line.split("==")
        for line in (DOCKER / "requirements-train.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    project = (REPO / "pyproject.toml").read_text()
    for name, version in pins.items():
        anchor = "dagster" if name == "dagster-pipes" else name  # dagster-pipes moves with dagster
        assert f'"{anchor}=={version}"' in project, f"{name}=={version} differs from pyproject"
    # The matter_model modules that training loads, and every module their code imports
    # (lazy imports inside functions too: dagster_pipes is imported only under Pipes).
    probe = "import sys, matter_model.train; print(*[m for m in sys.modules if 'matter_' in m])"
    modules = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    imported: set[str] = set()
    for module in modules:
        spec = importlib.util.find_spec(module)
        if spec and spec.origin and spec.origin.endswith(".py"):
            for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"matter_model", "__future__"}
    owners = importlib.metadata.packages_distributions()
    installed = _closure(set(pins))
    missing = {
        module: owners.get(module)
        for module in third_party
        if not {_canonical(d) for d in owners.get(module, [])} & installed
    }
    assert not missing, f"matter_model.train imports modules the training image lacks: {missing}"


def test_deployment_dagster_yaml_loads_with_postgres_and_a_queued_coordinator() -> None:
    config, _ = dagster_instance_config(str(DOCKER))
    db = config["storage"]["postgres"]["postgres_db"]
    assert db["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["compute_logs"]["class"] == "LocalComputeLogManager"


@pytest.mark.parametrize("setting", ["DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST", "DAGSTER_PG_DB"])
def test_a_missing_setting_fails_at_start_naming_it(
    setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(DOCKER / "dagster.yaml", tmp_path / "dagster.yaml")
    for key, value in DEPLOY_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DAGSTER_COMPUTE_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv(setting)
    with pytest.raises(DagsterInvalidConfigError, match=setting):
        DagsterInstance.from_config(str(tmp_path))
