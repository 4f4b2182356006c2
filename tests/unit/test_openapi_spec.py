"""The OpenAPI document (``/openapi.json``): a valid OpenAPI 3.1 document
that describes exactly the routes the gateway registers.

The gateway's answers are held to it by ``tests/fuzz/test_schemathesis.py``;
this file checks the document itself, without a server: the app is built
(routes are registered when it is made) but never started.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from filestore.api.app import create_app
from filestore.api.openapi import openapi_document
from filestore.config import Settings

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
PROBLEM = {"$ref": "#/components/responses/Problem"}
#: Answers of 400 or more that are not problems, on purpose: readiness is
#: the same JSON whether ready or not, for probes and dashboards.
NOT_PROBLEMS = {("GET", "/readyz", "503")}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi_document()


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def parameters(doc: dict[str, Any], path: str, op: dict[str, Any]) -> list[dict[str, Any]]:
    return [*doc["paths"][path].get("parameters", []), *op.get("parameters", [])]


def routed(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route, without the HEAD that aiohttp
    adds beside each GET (``allow_head``; the file's HEAD is a route of its
    own, its GET has ``allow_head=False``)."""
    routes: set[tuple[str, str]] = set()
    for resource in app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        assert isinstance(path, str), info
        for route in resource:
            routes.add((route.method, path))
    automatic = {("HEAD", p) for m, p in routes if m == "GET"} - {("HEAD", "/v1/files/{id}")}
    return routes - automatic


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1.")
    validate(doc, cls=OpenAPIV31SpecValidator)


def test_every_route_is_documented_and_every_documented_path_routed(
    doc: dict[str, Any], tmp_path: Path
) -> None:
    app = create_app(Settings.load(env={}, data_dir=tmp_path / "data"))
    described = {(method, path) for method, path, _op in operations(doc)}
    routes = routed(app)
    assert routes - described == set(), "routes missing from the document"
    assert described - routes == set(), "documented operations nothing serves"


def test_path_parameters_match_the_templates(doc: dict[str, Any]) -> None:
    for method, path, op in operations(doc):
        declared = {p["name"] for p in parameters(doc, path, op) if p["in"] == "path"}
        assert declared == set(re.findall(r"\{(\w+)\}", path)), (method, path)
        for p in parameters(doc, path, op):
            if p["in"] == "path":
                assert p.get("required") is True, (method, path, p["name"])


def test_parameter_and_body_schemas_are_valid_json_schema(doc: dict[str, Any]) -> None:
    """openapi-spec-validator checks the document's structure; each schema
    inside is also checked as a JSON Schema (2020-12, which OpenAPI 3.1
    uses), patterns included."""
    for _method, path, op in operations(doc):
        schemas = [p["schema"] for p in parameters(doc, path, op)]
        for media in op.get("requestBody", {}).get("content", {}).values():
            schemas.append(media["schema"])
        for schema in schemas:
            Draft202012Validator.check_schema(schema)
            for pattern in _patterns(schema):
                re.compile(pattern)


def _patterns(schema: Any) -> list[str]:
    found: list[str] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "pattern" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_patterns(value))
    elif isinstance(schema, list):
        for item in schema:
            found.extend(_patterns(item))
    return found


def test_operation_ids_are_unique_and_links_lead_somewhere(doc: dict[str, Any]) -> None:
    ids = [op.get("operationId") for _m, _p, op in operations(doc)]
    assert None not in ids and len(ids) == len(set(ids)), ids
    by_id = {op["operationId"]: (path, op) for _m, path, op in operations(doc)}
    links = 0
    for method, path, op in operations(doc):
        for status, response in op["responses"].items():
            for name, link in response.get("links", {}).items():
                assert link["operationId"] in by_id, (method, path, status, name)
                target_path, target = by_id[link["operationId"]]
                names = {p["name"] for p in parameters(doc, target_path, target)}
                assert set(link["parameters"]) <= names, (method, path, name)
                links += 1
    # An upload leads to what can be done with the file (stateful fuzzing).
    assert links >= 5


def test_errors_are_problems_and_keyed_operations_document_401_and_403(
    doc: dict[str, Any],
) -> None:
    default_security = doc["security"]
    for method, path, op in operations(doc):
        responses = op["responses"]
        assert any(code.startswith("2") or code.startswith("3") for code in responses), path
        for code, response in responses.items():
            if int(code) >= 400 and (method, path, code) not in NOT_PROBLEMS:
                assert response == PROBLEM, (method, path, code)
        if op.get("security", default_security) == default_security:
            assert {"401", "403"} <= set(responses), (method, path)
