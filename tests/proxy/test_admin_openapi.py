"""The admin API's OpenAPI document: it describes every route, and the server keeps to it.

Schemathesis (its ``st`` CLI, over HTTP, against a real proxy on a database of its own,
since it creates tenants and changes caps and prices) generates requests from the
document, valid and invalid, and checks that no answer is a server error or strays
from the document (status, content type, headers, body schema).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from jsonschema import Draft202012Validator

from proxy.simulator import SimulatorThread
from tests.support import (
    ProxyServer,
    create_pg_database,
    drop_pg_database,
    running_proxy,
    settings_for,
)

TOKEN = "schemathesis-admin-token-" + "f" * 32
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


@pytest.fixture(scope="module")
def fuzzed(
    simulator: SimulatorThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyServer]:
    """A proxy with the admin API on, on a PostgreSQL database of its own."""
    url = create_pg_database()
    try:
        settings = settings_for(
            url,
            simulator.base_url,
            Path(tmp_path_factory.mktemp("admin-openapi")),
            admin_token=TOKEN,
            unauthenticated_rpm=1_000_000,  # generated calls without the token are many
        )
        with running_proxy(settings) as server:
            yield server
    finally:
        drop_pg_database(url)


@pytest.fixture(scope="module")
def document(fuzzed: ProxyServer) -> dict[str, Any]:
    response = httpx2.get(fuzzed.base_url + "/admin/v1/openapi.json")  # no token needed
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_the_document_describes_every_admin_route(
    fuzzed: ProxyServer, document: dict[str, Any]
) -> None:
    assert document["openapi"].startswith("3.1")
    served = {
        (method.lower(), rule.rule.replace("<", "{").replace(">", "}"))
        for rule in fuzzed.app.url_map.iter_rules()
        if rule.rule.startswith("/admin/v1/") and rule.endpoint != "admin.openapi"
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    described = {(method, path) for path, item in document["paths"].items() for method in item}
    assert described == served
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for item in document["paths"].values():
        for operation in item.values():
            assert {"401", "403", "429"} <= set(operation["responses"])


@pytest.mark.timeout(600)  # some 1,500 generated calls: tens of seconds on a busy machine
def test_schemathesis_finds_no_server_error_and_no_answer_off_the_document(
    fuzzed: ProxyServer, document: dict[str, Any], tmp_path: Path
) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        fuzzed.base_url + "/admin/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        "5",
        "--seed",
        "20261130",  # the same cases every run: a failure here is a regression
        "--workers",
        "1",
        "--request-timeout",
        "20",
    ]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    count = sum(len(item) for item in document["paths"].values())  # every one was run
    assert f"Operations:       {count} selected / {count} total" in result.stdout, report
