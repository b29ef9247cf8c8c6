"""Static checks of docker-compose.yml, the Dockerfile and config/docker.yaml (no Docker engine)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from typing import Any

import pytest

from heliosproxy.config.load import load_config, load_yaml_file
from tests.helpers import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
CONFIG_IN_IMAGE = "/etc/heliosproxy/heliosproxy.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml_file(COMPOSE)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose["services"]
    assert isinstance(svcs, dict)
    return svcs


def _script(service: dict[str, Any]) -> str:
    """The shell script of an `entrypoint: [bash, -ec, SCRIPT, ...]`, with compose's $$ undone."""
    entrypoint = service["entrypoint"]
    assert entrypoint[:2] == ["bash", "-ec"], entrypoint
    return str(entrypoint[2]).replace("$$", "$")


def test_services_and_images(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"primary", "standby", "heliosproxy"}
    assert services["primary"]["image"] == "postgres:15"
    assert services["standby"]["image"] == "postgres:15"
    assert services["heliosproxy"]["build"]["context"] == "."
    for name, svc in services.items():
        assert set(svc) <= {
            "image", "build", "environment", "entrypoint", "command", "volumes", "ports",
            "healthcheck", "depends_on", "user",
        }, name


def test_published_ports(services: dict[str, dict[str, Any]]) -> None:
    # The admin port (dashboard, actions) is reachable from this host only.
    assert sorted(services["heliosproxy"]["ports"]) == ["127.0.0.1:9187:9187", "6432:6432"]
    assert "ports" not in services["primary"]
    assert "ports" not in services["standby"]


def test_healthchecks_and_start_order(services: dict[str, dict[str, Any]]) -> None:
    for name in ("primary", "standby"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL" and test[1].startswith("pg_isready "), name
    proxy_check = " ".join(services["heliosproxy"]["healthcheck"]["test"])
    assert "http://127.0.0.1:9187/live" in proxy_check  # /live never needs the admin token
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    healthcheck = dockerfile[dockerfile.index("HEALTHCHECK"):].split("\n\n")[0]
    assert "http://127.0.0.1:9187/live" in healthcheck and "Authorization" not in healthcheck
    assert services["standby"]["depends_on"] == {"primary": {"condition": "service_healthy"}}
    assert services["heliosproxy"]["depends_on"] == {
        "primary": {"condition": "service_healthy"},
        "standby": {"condition": "service_healthy"},
    }


def test_every_referenced_file_exists(compose: dict[str, Any]) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for spec in svc.get("volumes", []):
            source = spec.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO_ROOT / source).is_file(), f"{name}: {source}"
            else:
                assert source in declared_volumes, f"{name}: volume {source} not declared"
        build = svc.get("build")
        if build:
            context = REPO_ROOT / build["context"]
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file()
            for line in dockerfile.read_text().splitlines():
                if line.startswith(("COPY ", "ADD ")) and "--from=" not in line:
                    *sources, _dest = shlex.split(line)[1:]
                    for src in sources:
                        assert (context / src).exists(), f"Dockerfile {line!r}: {src} missing"


def test_dockerfile_runs_the_mounted_config(services: dict[str, dict[str, Any]]) -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    # A build stage with a C compiler builds the wheel (mypyc-compiled hot modules); the image installs it.
    assert [ln for ln in text.splitlines() if ln.startswith("FROM ")] == [
        "FROM python:3.11-slim AS build", "FROM python:3.11-slim"]
    build, runtime = text.split("\nFROM python:3.11-slim\n")
    assert "gcc" in build and "RUN pip wheel --no-deps -w /wheels ." in build and "gcc" not in runtime
    assert "COPY --from=build /wheels /wheels" in runtime and "pip install /wheels/heliosproxy-*.whl" in runtime
    # `pip wheel .` needs every file pyproject names (license-files) and setup.py inside the build stage.
    copied = {src for ln in build.splitlines() if ln.startswith("COPY ") for src in shlex.split(ln)[1:-1]}
    assert {"pyproject.toml", "setup.py", "README.md", "LICENSE", "heliosproxy"} <= copied
    assert 'ENTRYPOINT ["heliosproxy"]' in text
    proxy = services["heliosproxy"]
    assert proxy["command"] == ["run", "--config", CONFIG_IN_IMAGE]
    assert f"./config/docker.yaml:{CONFIG_IN_IMAGE}:ro" in proxy["volumes"]


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


# The one value compose takes from the host's environment: the admin token.
TOKEN_FROM_HOST = "${HELIOS_ADMIN_TOKEN:-}"


def test_no_unescaped_dollar_in_compose(compose: dict[str, Any]) -> None:
    # Compose interpolates $VAR / ${VAR} from the host: shell variables must be written $$.
    for text in _strings(compose):
        assert "$" not in text.replace("$$", "").replace(TOKEN_FROM_HOST, ""), text


def test_admin_token_comes_from_the_environment(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert services["heliosproxy"]["environment"] == {"HELIOS_ADMIN_TOKEN": TOKEN_FROM_HOST}
    monkeypatch.setenv("HELIOS_ADMIN_TOKEN", "from-env-123")
    assert load_config(REPO_ROOT / "config" / "docker.yaml").admin.token == "from-env-123"
    monkeypatch.delenv("HELIOS_ADMIN_TOKEN")
    assert load_config(REPO_ROOT / "config" / "docker.yaml").admin.token is None  # no token: no actions
    text = (REPO_ROOT / "config" / "docker.yaml").read_text()
    assert "${HELIOS_ADMIN_TOKEN" in text


@pytest.mark.parametrize("service", ["primary", "standby"])
def test_entrypoint_scripts_are_valid_bash(
    services: dict[str, dict[str, Any]], service: str
) -> None:
    res = subprocess.run(["bash", "-n", "-c", _script(services[service])],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_primary_creates_what_the_proxy_and_standby_use(
    services: dict[str, dict[str, Any]],
) -> None:
    primary = _script(services["primary"])
    assert "CREATE ROLE app LOGIN PASSWORD 'apppass';" in primary
    assert "CREATE DATABASE app OWNER app;" in primary
    assert "CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD 'replpass';" in primary
    assert "host replication replicator all scram-sha-256" in primary
    assert "exec docker-entrypoint.sh" in primary
    assert services["primary"]["environment"]["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    assert "wal_level=replica" in services["primary"]["command"]
    standby = _script(services["standby"])
    assert "pg_basebackup -D \"$PGDATA\" -R" in standby
    assert "host=primary port=5432 user=replicator password=replpass" in standby
    assert "exec postgres" in standby


def test_docker_config_matches_compose(services: dict[str, dict[str, Any]]) -> None:
    config = load_config(REPO_ROOT / "config" / "docker.yaml")
    assert config.listen == "0.0.0.0:6432"
    assert config.admin.listen == "0.0.0.0:9187"
    assert {(n.host, n.port, n.role.value) for n in config.nodes} == {
        ("primary", 5432, "primary"),
        ("standby", 5432, "standby"),
    }
    assert {n.host for n in config.nodes} <= set(services)
    app = config.user("app")
    assert app is not None and app.password == "apppass"
    assert config.admin.users == ("admin",)


def test_check_config_accepts_docker_yaml() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "heliosproxy", "check-config", "config/docker.yaml"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr



def test_readme_agrees_with_compose(services: dict[str, dict[str, Any]]) -> None:
    """The README's docker-compose section names the same services and ports as the file."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("### docker-compose"):]
    for name in services:
        assert f"(`{name}`" in section, f"README does not name service {name}"
    published = {str(p).split(":")[-2] for svc in services.values() for p in svc.get("ports", [])}
    assert published == {"6432", "9187"}
    for port in published:
        assert port in section, f"README does not mention port {port}"
