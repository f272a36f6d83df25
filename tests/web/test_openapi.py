"""The OpenAPI document is the contract: every status an operation answers is declared, with the error schema."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import carvault.web
from carvault.errors import all_error_classes
from carvault.ingest.frames import FRAME_MEDIA_TYPE
from carvault.protocol.envelope import BATCH_MEDIA_TYPE
from carvault.server import BackgroundServer
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.identity import VehicleIdentity
from carvault.web.errors import ERROR_SCHEMA
from tests.conftest import OwnerClient
from tests.factories import BASE_MS, drive_table

try:  # this module is also schemathesis's hooks module (SCHEMATHESIS_HOOKS): raw bodies are sent as bytes
    import schemathesis

    for media in (BATCH_MEDIA_TYPE, FRAME_MEDIA_TYPE, "application/zip"):
        schemathesis.serializer.alias(media, "application/octet-stream")
except ImportError:
    pass

ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}
METHODS = {"get", "post", "put", "delete", "patch"}


@pytest.fixture
def document(http: httpx.Client) -> dict[str, Any]:
    r = http.get("/api/v1/openapi.json")
    assert r.status_code == 200
    return r.json()


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, path, op) for path, item in doc["paths"].items() for m, op in item.items() if m in METHODS]


def test_every_error_answer_uses_the_error_schema(document: dict[str, Any]) -> None:
    assert document["components"]["schemas"][ERROR_SCHEMA]["required"] == ["error"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for method, path, op in operations(document):
        errors = {s: a for s, a in op["responses"].items() if int(s) >= 400}
        assert "503" in errors, (method, path)
        for status, answer in errors.items():
            assert answer["content"]["application/json"]["schema"] == ERROR_REF, (method, path, status)


def test_error_schema_lists_every_code(document: dict[str, Any]) -> None:
    enum = document["components"]["schemas"][ERROR_SCHEMA]["properties"]["error"]["properties"]["code"]["enum"]
    assert set(enum) == {c.code for c in all_error_classes()}


# (method, path, statuses it must declare): derived from dependencies and parameters, or declared by the route.
DECLARED = [
    ("get", "/api/v1/vehicles", {"401", "403", "503"}),
    ("get", "/api/v1/vehicles/{vin}/telemetry", {"400", "401", "403", "404", "422", "503"}),
    ("post", "/api/v1/vehicles/claim", {"401", "404", "409", "422", "429"}),
    ("post", "/api/v1/auth/login", {"401", "422", "429"}),
    ("post", "/api/v1/auth/register", {"409", "422"}),
    ("get", "/api/v1/vehicle/policy", {"401"}),
    ("post", "/api/v1/ingest/batches", {"400", "401", "403", "409", "413", "415", "421", "422", "503"}),
    ("post", "/api/v1/ingest/frames", {"400", "401", "409", "413", "415", "422", "503"}),
    ("get", "/api/v1/exports/{export_id}/download", {"401", "404", "409"}),
]


@pytest.mark.parametrize(("method", "path", "statuses"), DECLARED, ids=lambda v: str(v))
def test_operation_declares_its_statuses(document: dict[str, Any], method: str, path: str, statuses: set[str]) -> None:
    assert statuses <= set(document["paths"][path][method]["responses"])


def test_error_headers_are_declared(document: dict[str, Any]) -> None:
    login = document["paths"]["/api/v1/auth/login"]["post"]["responses"]
    assert "Retry-After" in login["429"]["headers"] and "WWW-Authenticate" in login["401"]["headers"]
    assert (
        "CarVault-Region-Endpoint" in document["paths"]["/api/v1/ingest/batches"]["post"]["responses"]["421"]["headers"]
    )


def test_request_shapes_the_routes_read_themselves_are_declared(document: dict[str, Any]) -> None:
    upload = document["paths"]["/api/v1/ingest/batches"]["post"]
    assert list(upload["requestBody"]["content"]) == [BATCH_MEDIA_TYPE] and upload["requestBody"]["required"]
    policy = document["paths"]["/api/v1/vehicle/policy"]["get"]
    headers = {p["name"] for p in policy["parameters"] if p["in"] == "header" and p["required"]}
    assert headers == {"CarVault-Vin", "CarVault-Time", "CarVault-Signature"}


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/v1/log/saved-checkpoints", "GET, POST"),
        ("PATCH", "/api/v1/vehicles/LRWTEST0000000001/consents/location", "DELETE, PUT"),
        ("DELETE", "/api/v1/health", "GET"),
    ],
)
def test_method_not_allowed_lists_every_method_of_the_path(
    http: httpx.Client, method: str, path: str, allow: str
) -> None:
    r = http.request(method, path)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["Allow"] == allow


def test_web_layer_spells_no_error_code() -> None:
    """Codes come from the error classes: a string literal equal to a code in web/ is a second copy."""
    codes = {c.code for c in all_error_classes()}
    found = []
    for path in Path(carvault.web.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in codes:
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert found == []


@pytest.mark.slow
def test_schemathesis_finds_no_undocumented_status_and_no_server_error(
    server: BackgroundServer,
    http: httpx.Client,
    owner: OwnerClient,
    vehicle: VehicleIdentity,
    agent: VehicleAgent,
    tmp_path: Path,
) -> None:
    """Fuzz every operation as a real owner of a car with data: each status is declared, and none is a 5xx."""
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    pairing = {"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    assert http.post("/api/v1/vehicles/claim", headers=owner.headers, json=pairing).status_code == 201
    agent.record(drive_table(seconds=120, paths=["Vehicle.Speed"]), batch_seconds=60)
    assert len(agent.upload_pending()) == 2
    config = tmp_path / "schemathesis.toml"  # real values, so the fuzzer reaches past "no such vehicle"
    config.write_text(f'[parameters]\n"path.vin" = "{vehicle.vin}"\n"query.start" = "{BASE_MS}"\n')
    report = tmp_path / "report.json"
    run = subprocess.run(
        [
            cli,
            "--config-file",
            str(config),
            "run",
            f"{server.url}/api/v1/openapi.json",
            "--checks",
            "status_code_conformance,not_a_server_error,unsupported_method",  # 405 with Allow, too
            "--max-examples",
            "5",
            "--workers",
            "1",  # hypothesis describes filters by parsing lambda source, which is not thread-safe on CPython 3.11
            "--max-time",
            "150",
            "--seed",
            "8",
            "--exclude-path-regex",
            "^/api/v1/auth/(logout|password|credentials/)",  # they would end the fuzzer's own session
            "--header",
            f"Authorization: {owner.headers['Authorization']}",
            "--no-color",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=420,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.web.test_openapi"},
    )
    assert run.returncode == 0, run.stdout[-6000:]
    assert json.loads(report.read_text()) is not None


VEHICLE_HEADERS = {"CarVault-Vin": "LRWTEST0000000001", "CarVault-Signature": "AAAA"}


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/api/v1/vehicle/policy", {**VEHICLE_HEADERS, "CarVault-Time": b"\xb9"}, 401),  # latin-1 '¹' is a digit
        ("/api/v1/vehicle/policy", {**VEHICLE_HEADERS, "CarVault-Time": "9" * 5000}, 401),
        ("/api/v1/vehicles/LRWTEST0000000001/telemetry?start=0&end=%C2%B9", {}, 400),
        ("/api/v1/log/proof/consistency?old=1&new=%C2%B9", {}, 422),
    ],
    ids=["time-superscript", "time-5000-digits", "window-superscript", "log-superscript"],
)
def test_hostile_values_get_a_4xx_never_a_500(
    http: httpx.Client, owner: OwnerClient, vehicle: VehicleIdentity, path: str, headers: dict[str, Any], status: int
) -> None:
    pairing = {"vin": vehicle.vin, "pairing_code": vehicle.pairing_code}
    assert http.post("/api/v1/vehicles/claim", headers=owner.headers, json=pairing).status_code == 201
    r = http.get(path, headers={**owner.headers, **headers})
    assert r.status_code == status, r.text
