"""The compose deployment: ``docker compose config`` accepts it, and it has what it promises.

Only the configuration is checked here (there is no container engine in the test
environment): Debian's ``docker-compose`` validates and resolves the file, and the
resolved file is read back to check the services, health checks, profiles and volumes.
``make test`` installs ``docker-compose`` when it is missing (``make compose-cli``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_docs import env_names

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
APP_SERVICES = ("migrate", "proxy", "console", "simulator")


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: `make compose-cli` installs it"
    command = [binary, "--project-directory", str(ROOT), "-f", str(COMPOSE)]
    command += ["--env-file", str(ENV_EXAMPLE), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The configuration compose runs with, every profile on, ``.env.example`` filled in."""
    result = compose("--profile", "demo", "config")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_docker_compose_config_accepts_the_file() -> None:
    result = compose("config", "-q")  # the default profile; ``resolved`` checks "demo"
    assert result.returncode == 0, result.stderr


def test_services_and_the_demo_profile(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(services) == {"postgres", "redis", *APP_SERVICES}
    assert services["simulator"]["profiles"] == ["demo"]
    assert all("profiles" not in s for name, s in services.items() if name != "simulator")


def test_every_long_running_service_has_a_health_check(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in ("postgres", "redis", "proxy", "console", "simulator"):
        assert services[name]["healthcheck"]["test"], name
    assert "/readyz" in " ".join(services["proxy"]["healthcheck"]["test"])
    assert "healthcheck" not in services["migrate"]


def test_migrations_run_once_before_the_proxy_and_console(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["metergate", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("proxy", "console"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    for name in ("postgres", "redis"):
        assert services["proxy"]["depends_on"][name]["condition"] == "service_healthy"


def test_the_proxy_runs_gunicorn_workers_on_postgres_and_redis(resolved: dict[str, Any]) -> None:
    proxy = resolved["services"]["proxy"]
    command = proxy["command"]
    assert command[:3] == ["metergate", "serve", "proxy"]
    assert int(command[command.index("--workers") + 1]) >= 2
    environment = proxy["environment"]
    assert environment["METERGATE_DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in environment["METERGATE_DATABASE_URL"]
    assert environment["METERGATE_REDIS_URL"] == "redis://redis:6379/0"


def test_state_lives_in_named_volumes(resolved: dict[str, Any]) -> None:
    assert set(resolved["volumes"]) == {"postgres-data", "redis-data", "proxy-spool"}

    def mounts(service: str) -> dict[str, str]:
        """target -> named volume (compose v1 writes "source:target:mode", v2 mappings)."""
        found = {}
        for volume in resolved["services"][service]["volumes"]:
            if isinstance(volume, str):
                source, target = volume.split(":")[:2]
            else:
                source, target = volume["source"], volume["target"]
            if source in resolved["volumes"]:
                found[target] = source
        return found

    assert mounts("postgres")["/var/lib/postgresql/data"] == "postgres-data"
    assert mounts("redis")["/data"] == "redis-data"
    assert mounts("proxy")["/data"] == "proxy-spool"  # the record spool outlives a restart


def test_images_are_built_from_the_repository_dockerfile(resolved: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        assert Path(resolved["services"][name]["build"]["context"]) == ROOT, name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^CMD \[\"metergate\", \"serve\", \"proxy\"", dockerfile, re.M)
    assert re.search(r"^USER \S+", dockerfile, re.M)  # not root


def test_env_example_covers_every_variable_compose_reads() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    example = ENV_EXAMPLE.read_text()
    given = set(re.findall(r"^([A-Z0-9_]+)=", example, re.M))
    assert used <= given, f"missing from .env.example: {sorted(used - given)}"
    compose_only = {"POSTGRES_PASSWORD", "METERGATE_PROXY_WORKERS"}
    compose_only |= {"METERGATE_PROXY_PORT", "METERGATE_CONSOLE_PORT"}
    settings = {name for name in given if name not in compose_only}
    assert settings <= set(env_names()), sorted(settings - set(env_names()))
