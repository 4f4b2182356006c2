"""schemathesis against the OpenAPI document the gateway serves.

Every operation in ``/openapi.json`` is called by schemathesis with data it
generates from the document (valid and invalid), on a real gateway, with a
valid API key of the role the operation needs, and every answer is checked:
no 5xx, a documented status code, the documented content type and schema,
and for every status of 400 or more an RFC 9457 problem (``problem_details``
below). Operations that declare a bearer key are also probed without one
and with a wrong one (schemathesis's ``ignored_auth``). The stateful test
follows the document's links: an upload, then reads, metadata, links and
deletion of the file it made.

How this meets asyncio: schemathesis calls the server synchronously (with
``requests``) from the test's thread, so the gateway runs on an event loop
of its own in a background thread (:class:`Served`). One gateway serves all
examples, on purpose (one per metadata backend for the module).

Why the document comes from :func:`openapi_document` at import and not from
the server: the lazy loader (``schemathesis.pytest.from_fixture``) of
schemathesis 4.32 does not run under pytest 9 (it sets ``Node._nodeid``,
which pytest 9 no longer has). ``test_fuzzed_document_is_the_served_one``
checks that the document fuzzed here is the one the server serves.

Default run: schemathesis's coverage cases (boundary and invalid values for
every parameter) and 10 random examples per operation, 25 stateful
scenarios, derandomized. The long run (``-m long``) draws
``FILESTORE_FUZZ_EXAMPLES`` examples per operation (default 500) and as many
scenarios, new ones each time; see docs/testing.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from schemathesis import Case, CheckContext, CheckFunction, Response
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput
from schemathesis.specs.openapi.stateful import OpenAPIStateMachine

from filestore.api.openapi import openapi_document
from filestore.metadata.base import Role
from tests.support.gateway import Gateway, running_gateway
from tests.support.postgres import PostgresServer

T = TypeVar("T")
WAIT = 60.0
PROBLEM = "application/problem+json"
DEFAULT_EXAMPLES = 10
DEFAULT_SCENARIOS = 25
LONG_EXAMPLES = int(os.environ.get("FILESTORE_FUZZ_EXAMPLES", "500"))

DOCUMENT = openapi_document()
UPLOAD = "POST /v1/files"
RECEIPT = "GET /v1/files/{id}/receipt"
SCHEMA = schemathesis.openapi.from_dict(
    openapi_document(),  # a copy of its own: schemathesis inlines refs and adds links in it
    config=schemathesis.Config.from_dict(
        {
            # Valid and invalid data. The key is not generated: each call
            # sends a valid one of the role its operation needs (Served.headers),
            # and ignored_auth probes without one and with a wrong one.
            "generation": {"mode": "all", "with-security-parameters": False},
            # Replaced by valid_requests_accepted below, which knows the few
            # refusals of schema-valid requests that no schema can rule out.
            "checks": {"positive_data_acceptance": {"enabled": False}},
            "operations": [
                {
                    # A receipt is what a deletion leaves: use_after_free
                    # takes its 200 after DELETE for the file still served.
                    "include-operation-id": "getReceipt",
                    "checks": {"use_after_free": {"enabled": False}},
                }
            ],
        }
    ),
)

#: Statuses a schema-valid request may get: schemathesis's own
#: positive_data_acceptance default (without 5xx, which fail anyway), and 410,
#: which like 404 is about the file, not the request (deleted, expired, used up).
ACCEPTED = frozenset(range(200, 400)) | {401, 403, 404, 409, 410, 429}
#: Refusals of schema-valid requests that depend on what JSON Schema cannot
#: say: a server setting, the state of the log, the body's hash, one header
#: against another, bytes rather than characters. By operation: (status,
#: how the problem's detail starts).
SEMANTIC_REFUSALS: dict[str, tuple[tuple[int, str], ...]] = {
    UPLOAD: (
        (400, "ttl must be positive"),
        (400, "ttl may be at most"),  # MAX_TTL is a setting
        (400, "filename may be at most 255 bytes"),
        (400, "Content-Digest and X-Checksum-SHA256 disagree"),
        (422, ""),  # a checksum header that is not the body's
    ),
    "GET /v1/files/{id}": (  # a Range against the file's size
        (416, "the range starts past the end of the file"),
        (416, "the range selects no bytes of the file"),
    ),
    "POST /v1/files/{id}/links": ((400, "ttl must be positive"),),
    "GET /v1/audit/deletions": ((400, "consistency_from must be between 0 and"),),
    # Sizes are bounded by the log's size, which the schema cannot know.
    "GET /v1/audit/consistency": ((400, "a consistency proof needs 0 <= from <= to <="),),
}


#: The role whose key each path prefix needs (first match wins).
ROLES = (
    ("/v1/audit/", Role.AUDITOR),
    ("/v1/purge/", Role.OPERATOR),
    ("/v1/files", Role.CLIENT),
)


class Served:
    """A gateway serving on a loopback port from an event loop in a
    background thread, so that synchronous callers (schemathesis) can talk
    to it while the test thread blocks."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._running = running_gateway(tmp_path, database_url=database_url)
        try:
            self.gateway: Gateway = self.run(self._running.__aenter__())
            self.keys = {role: self.run(self.gateway.key("acme", role)) for role in Role}
        except BaseException:
            self._stop_loop()
            raise
        self.base_url = str(self.gateway.client.make_url("")).rstrip("/")

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the gateway's loop and wait for it (bounded)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    def headers(self, case: Case[Any]) -> dict[str, str]:
        """A valid key of the role the operation needs."""
        role = next((r for prefix, r in ROLES if case.path.startswith(prefix)), Role.CLIENT)
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def purge_pass(self) -> None:
        resp = requests.post(
            self.base_url + "/v1/purge/run",
            headers={"Authorization": f"Bearer {self.keys[Role.OPERATOR]}"},
            timeout=WAIT,
        )
        assert resp.status_code == 200, resp.text

    def close(self) -> None:
        try:
            self.run(self._running.__aexit__(None, None, None))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One gateway per metadata backend for the whole module, as the
    hand-written fuzzer does: starting one per operation cost more than the
    fuzzing. (PostgreSQL: a database of its own on the session's server,
    dropped after.)"""
    root = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    server: PostgresServer | None = None
    if request.param == "sqlite":
        url = f"sqlite:///{root / 'data' / 'filestore.db'}"
    else:
        server = request.getfixturevalue("postgres")
        database = asyncio.run(server.create_database())
        url = server.url(database)
    try:
        gateway = Served(root, url)
        try:
            yield gateway
        finally:
            gateway.close()
    finally:
        if server is not None:
            asyncio.run(server.drop_database(database))


def problem_details(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Every answer of 400 or more is problem+json whose ``status`` is the
    HTTP status (the gateway's own invariant, beyond what the document
    says)."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.split(";")[0].strip() == PROBLEM, (
        f"{response.status_code} answered as {content_type!r}"
    )
    if case.method.upper() == "HEAD":
        return None  # no body to check
    doc = json.loads(response.content)
    assert isinstance(doc, dict), doc
    assert doc.get("status") == response.status_code, doc
    assert isinstance(doc.get("type"), str) and doc["type"].startswith("urn:filestore:problem:"), (
        doc
    )
    assert isinstance(doc.get("title"), str) and doc["title"], doc
    return None


VALIDATOR = Draft202012Validator({}, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _parameters(case: Case[Any]) -> list[dict[str, Any]]:
    item = DOCUMENT["paths"][case.operation.path]
    op = item[case.method.lower()]
    return [*item.get("parameters", []), *op.get("parameters", [])]


def _sent_values_are_valid(case: Case[Any]) -> bool:
    """Whether every query and header value sent is valid for its schema.

    schemathesis labels a whole case positive by how it meant to make it,
    and its coverage phase sometimes fills an optional patterned header with
    a value the pattern refuses (``Content-Digest: 0``); such a case is no
    evidence that the gateway refuses valid input."""
    for param in _parameters(case):
        container = {"query": case.query, "header": case.headers}.get(param["in"])
        if not container or param["name"] not in container:
            continue
        value: Any = container[param["name"]]
        if param["schema"].get("type") == "integer":
            try:
                value = int(str(value))
            except ValueError:
                return False
        elif not isinstance(value, str):
            value = str(value)
        if not VALIDATOR.evolve(schema=param["schema"]).is_valid(value):
            return False
    return True


def valid_requests_accepted(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """A request valid for the document is accepted, unless it breaks one of
    the SEMANTIC_REFUSALS (then with exactly that problem). Replaces
    schemathesis's positive_data_acceptance, which cannot be told about
    those."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status in ACCEPTED or status >= 500 or not _sent_values_are_valid(case):
        return None
    detail = ""
    if "json" in response.headers.get("content-type", [""])[0]:
        detail = str(json.loads(response.content).get("detail", ""))
    allowed = SEMANTIC_REFUSALS.get(case.operation.label, ())
    assert any(status == s and detail.startswith(d) for s, d in allowed), (
        f"a schema-valid request was refused: {status} {detail!r}"
    )
    return None


CHECKS: list[CheckFunction] = [problem_details, valid_requests_accepted]


def _call(case: Case[Any], served: Served) -> None:
    case.call_and_validate(
        base_url=served.base_url,
        headers=served.headers(case),
        additional_checks=CHECKS,
        timeout=WAIT,
    )


#: The default run is derandomized (the same examples each run, so a failure
#: in CI reproduces); the long run draws new ones each time.
LONG = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FUZZ = settings(LONG, derandomize=True)


def test_fuzzed_document_is_the_served_one(served: Served) -> None:
    resp = requests.get(served.base_url + "/openapi.json", timeout=WAIT)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == openapi_document() == DOCUMENT


@SCHEMA.parametrize()
@settings(FUZZ, max_examples=DEFAULT_EXAMPLES)
def test_every_operation(case: Case[Any], served: Served) -> None:
    _call(case, served)


@pytest.mark.long
@SCHEMA.parametrize()
@settings(LONG, max_examples=LONG_EXAMPLES)
def test_every_operation_long(case: Case[Any], served: Served) -> None:
    _call(case, served)


def _state_machine(served: Served, followed: list[tuple[str, int]]) -> type[OpenAPIStateMachine]:
    """The document's state machine, calling ``served`` with the right key;
    each step that followed a link is noted in ``followed`` (operation,
    status)."""
    base: type[OpenAPIStateMachine] = SCHEMA.as_state_machine()  # type: ignore[assignment]

    class Scenario(base):  # type: ignore[valid-type, misc]
        def get_call_kwargs(self, case: Case[Any]) -> dict[str, Any]:
            return {"base_url": served.base_url, "headers": served.headers(case), "timeout": WAIT}

        def before_call(self, case: Case[Any]) -> None:
            if case.operation.label == RECEIPT:
                # An operator's pass in between, so that a deletion is under
                # a signed checkpoint and its receipt can be had (200).
                served.purge_pass()

        def step(self, input: StepInput) -> StepOutput:
            output: StepOutput = super().step(input)
            if input.is_applied:
                followed.append((input.case.operation.label, output.response.status_code))
            return output

        def validate_response(
            self, response: Response, case: Case[Any], additional_checks: Any = None, **kwargs: Any
        ) -> None:
            super().validate_response(response, case, additional_checks=CHECKS, **kwargs)

    return Scenario


#: Steps per scenario (schemathesis's own default): enough for an upload,
#: what its links lead to, and what the deletion's links lead to.
STEPS = 6


def test_stateful(served: Served) -> None:
    followed: list[tuple[str, int]] = []
    scenarios = settings(FUZZ, max_examples=DEFAULT_SCENARIOS, stateful_step_count=STEPS)
    _state_machine(served, followed).run(settings=scenarios)
    # The links were followed to a stored file, not only to 404s.
    reached = {op for op, status in followed if 200 <= status < 300}
    assert reached - {"DELETE /v1/files/{id}"}, followed


@pytest.mark.long
def test_stateful_long(served: Served) -> None:
    scenarios = settings(LONG, max_examples=LONG_EXAMPLES, stateful_step_count=STEPS)
    _state_machine(served, []).run(settings=scenarios)
