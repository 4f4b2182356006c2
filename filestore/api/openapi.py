"""The OpenAPI 3.1 description of every route, served at ``/openapi.json``.

Kept as data next to the handlers; a test checks that every registered route
is described here and nothing else is.
"""

from __future__ import annotations

from typing import Any

from filestore import __version__
from filestore.sessions import LINK_TOKEN_PATTERN

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "File id: 22 characters of unpadded base64url (128 random bits).",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"},
}
_ERRORS = {
    "400": _PROBLEM,
    "401": _PROBLEM,
    "403": _PROBLEM,
    "404": _PROBLEM,
    "503": _PROBLEM,
}


def _with_errors(responses: dict[str, Any], *extra: str) -> dict[str, Any]:
    out = dict(responses)
    for code in (*_ERRORS, *extra):
        out.setdefault(code, _PROBLEM)
    return out


def openapi_document() -> dict[str, Any]:
    """The document as a fresh dict (callers may mutate it)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "filestore",
            "version": __version__,
            "description": "Temporary file store: encrypted at rest, unreadable at expiry, "
            "irreversibly deleted within 24 hours of upload.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "request_id": {"type": "string"},
                    },
                },
                "File": {
                    "type": "object",
                    "required": ["id", "size", "sha256", "created_at", "expires_at", "url"],
                    "properties": {
                        "id": {"type": "string"},
                        "size": {"type": "integer", "minimum": 0},
                        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "expires_at": {"type": "string", "format": "date-time"},
                        "filename": {"type": ["string", "null"]},
                        "content_type": {"type": ["string", "null"]},
                        "max_downloads": {"type": ["integer", "null"]},
                        "url": {"type": "string"},
                    },
                },
            },
            "responses": {
                "Problem": {
                    "description": "An RFC 9457 problem.",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                }
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/files": {
                "post": {
                    "summary": "Upload a file (raw body or multipart/form-data), streamed.",
                    "parameters": [
                        {
                            "name": "ttl",
                            "in": "query",
                            "description": "Lifetime: seconds, or a number with s, m or h; "
                            "at most the server's max TTL.",
                            "schema": {"type": "string", "pattern": r"^(\d+(\.\d+)?[smhd]?)+$"},
                        },
                        {
                            "name": "filename",
                            "in": "query",
                            "schema": {"type": "string", "maxLength": 255},
                        },
                        {
                            "name": "max_downloads",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1},
                        },
                        {
                            "name": "Content-Digest",
                            "in": "header",
                            "description": "Expected checksum, sha-256=:BASE64: (RFC 9530).",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "X-Checksum-SHA256",
                            "in": "header",
                            "description": "Expected checksum as 64 hex characters.",
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"file": {"type": "string", "format": "binary"}},
                                }
                            },
                        },
                    },
                    "responses": _with_errors(
                        {
                            "201": {
                                "description": "Stored.",
                                "headers": {"Location": {"schema": {"type": "string"}}},
                                "content": {
                                    "application/json": {
                                        "schema": {"$ref": "#/components/schemas/File"}
                                    }
                                },
                            }
                        },
                        "408",
                        "413",
                        "422",
                    ),
                }
            },
            "/v1/files/{id}": {
                "parameters": [_ID_PARAM],
                "get": {
                    "summary": "Stream the plaintext; a single Range is honoured.",
                    "description": "Authorised by an API key, or by a signed link's "
                    "expires and signature query parameters.",
                    "security": [{"bearer": []}, {}],
                    "parameters": [
                        {"name": "expires", "in": "query", "schema": {"type": "integer"}},
                        {"name": "signature", "in": "query", "schema": {"type": "string"}},
                        {"name": "Range", "in": "header", "schema": {"type": "string"}},
                        {"name": "If-Range", "in": "header", "schema": {"type": "string"}},
                        {
                            "name": "If-None-Match",
                            "in": "header",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": _with_errors(
                        {
                            "200": {
                                "description": "The whole file.",
                                "content": {
                                    "application/octet-stream": {
                                        "schema": {"type": "string", "format": "binary"}
                                    }
                                },
                            },
                            "206": {"description": "The requested range."},
                            "304": {"description": "Not modified."},
                        },
                        "410",
                        "416",
                    ),
                },
                "head": {
                    "summary": "The file's metadata in headers.",
                    "security": [{"bearer": []}, {}],
                    "responses": _with_errors({"200": {"description": "Metadata."}}, "410"),
                },
                "delete": {
                    "summary": "Delete early: crypto-erase, blob removal, tombstone.",
                    "responses": _with_errors(
                        {
                            "204": {"description": "Deleted."},
                            "202": {"description": "Another worker is deleting it."},
                        },
                        "410",
                    ),
                },
            },
            "/v1/files/{id}/links": {
                "parameters": [_ID_PARAM],
                "post": {
                    "summary": "A signed download URL, valid at most as long as the file.",
                    "parameters": [
                        {
                            "name": "ttl",
                            "in": "query",
                            "schema": {"type": "string", "pattern": r"^(\d+(\.\d+)?[smhd]?)+$"},
                        }
                    ],
                    "responses": _with_errors(
                        {
                            "201": {
                                "description": "The link.",
                                "content": {
                                    "application/json": {
                                        "schema": {
                                            "type": "object",
                                            "required": ["url", "expires_at"],
                                            "properties": {
                                                "url": {"type": "string"},
                                                "expires_at": {
                                                    "type": "string",
                                                    "format": "date-time",
                                                },
                                            },
                                        }
                                    }
                                },
                            }
                        },
                        "410",
                    ),
                },
            },
            "/v1/files/{id}/receipt": {
                "parameters": [_ID_PARAM],
                "get": {
                    "summary": "The signed deletion receipt of a purged file: its audit "
                    "record, Merkle inclusion proof and covering checkpoint.",
                    "responses": _with_errors(
                        {"200": {"description": "The receipt (JSON)."}}, "409"
                    ),
                },
            },
            "/v1/purge/status": {
                "get": {
                    "summary": "Purge scheduler state, backlog, overdue times, failures, "
                    "health (operator).",
                    "responses": _with_errors({"200": {"description": "Status (JSON)."}}),
                }
            },
            "/v1/cluster/join": {
                "post": {
                    "summary": "Hand the ratchet key schedule to a joining instance "
                    "(instances only; authenticated by the cluster secret in the body).",
                    "requestBody": {
                        "content": {"application/octet-stream": {"schema": {"type": "string"}}}
                    },
                    "responses": _with_errors(
                        {"200": {"description": "The encrypted, authenticated answer."}}
                    ),
                }
            },
            "/v1/purge/run": {
                "post": {
                    "summary": "Run a purge pass now and return its report (operator).",
                    "responses": _with_errors({"200": {"description": "The pass report."}}),
                }
            },
            "/v1/audit/deletions": {
                "get": {
                    "summary": "Export the deletion log (auditor), streamed.",
                    "parameters": [
                        {
                            "name": "format",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["jsonl", "csv"]},
                        },
                        {
                            "name": "since",
                            "in": "query",
                            "description": "RFC 3339 time or Unix seconds, inclusive.",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "until",
                            "in": "query",
                            "description": "RFC 3339 time or Unix seconds, exclusive.",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "consistency_from",
                            "in": "query",
                            "description": "Tree size of a checkpoint the auditor kept; the "
                            "export then proves it consistent with the newest one.",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                    ],
                    "responses": _with_errors(
                        {
                            "200": {
                                "description": "JSONL (application/x-ndjson) or CSV.",
                            }
                        }
                    ),
                }
            },
            "/v1/audit/checkpoint": {
                "get": {
                    "summary": "The newest signed checkpoint (a C2SP signed note).",
                    "responses": _with_errors({"200": {"description": "text/plain note."}}),
                }
            },
            "/v1/audit/public-key": {
                "get": {
                    "summary": "The audit log's Ed25519 public key (PEM; "
                    "format=vkey for a C2SP verifier key).",
                    "security": [],
                    "parameters": [
                        {
                            "name": "format",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["pem", "vkey"]},
                        }
                    ],
                    "responses": {"200": {"description": "The key."}},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (text format 1.0.0, prometheus_client).",
                    "security": [],
                    "responses": {"200": {"description": "Metrics."}},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness.",
                    "security": [],
                    "responses": {"200": {"description": "Serving."}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: database and storage reachable.",
                    "security": [],
                    "responses": {
                        "200": {"description": "Ready."},
                        "503": {"description": "A dependency is failing."},
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.1 document."}},
                }
            },
            **_status_page_paths(),
        },
    }


def _status_page_paths() -> dict[str, Any]:
    """The operator status page (``filestore.api.status_page``): HTML for a
    browser, signed in by a session cookie, not by a bearer key."""
    html = {"text/html": {"schema": {"type": "string"}}}
    see_other = {
        "description": "See Other: on to the page or back to the sign-in form.",
        "headers": {"Location": {"schema": {"type": "string"}, "required": True}},
    }
    form = {
        "schema": {
            "type": "object",
            "required": ["api_key"],
            "properties": {"api_key": {"type": "string", "minLength": 1}},
        }
    }
    return {
        "/status": {
            "get": {
                "operationId": "statusPage",
                "summary": "The operator status page (HTML): purge state, backlog, charts, "
                "passes, failures, dependencies, KEK epochs. Needs the session cookie "
                "filestore_status (from the sign-in form or a link); else 303 to the form.",
                "security": [],
                "responses": {
                    "200": {"description": "The page.", "content": html},
                    "303": see_other,
                    "503": _PROBLEM,
                },
            }
        },
        "/status/login": {
            "get": {
                "operationId": "statusLoginForm",
                "summary": "The status page's sign-in form (HTML).",
                "security": [],
                "parameters": [
                    {
                        "name": "note",
                        "in": "query",
                        "description": "Why the form is shown again.",
                        "schema": {
                            "type": "string",
                            "enum": ["refused", "expired", "link", "signed-out"],
                        },
                    }
                ],
                "responses": {
                    "200": {"description": "The form.", "content": html},
                    "303": see_other,
                    "400": _PROBLEM,
                    "503": _PROBLEM,
                },
            },
            "post": {
                "operationId": "statusLogin",
                "summary": "Sign in with an operator API key (form field api_key): sets the "
                "session cookie (HttpOnly, SameSite=Strict, at most 12 h) and 303 to /status; "
                "a refused key gets 303 back to the form. 403 for a form posted from "
                "another site (Origin, Sec-Fetch-Site).",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {"application/x-www-form-urlencoded": form},
                },
                "responses": {
                    "303": see_other,
                    "400": _PROBLEM,
                    "403": _PROBLEM,
                    "413": _PROBLEM,
                    "503": _PROBLEM,
                },
            },
        },
        "/status/logout": {
            "post": {
                "operationId": "statusLogout",
                "summary": "Sign out: clears the session cookie; 303 to the form.",
                "security": [],
                "responses": {"303": see_other, "403": _PROBLEM},
            }
        },
        "/status/link": {
            "get": {
                "operationId": "statusLink",
                "summary": "Open a one-time sign-in link from `filestore status-link`: sets "
                "the session cookie and moves on to /status (HTML refresh); an expired, "
                "used or altered link gets 303 to the form.",
                "security": [],
                "parameters": [
                    {
                        "name": "token",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "pattern": f"^{LINK_TOKEN_PATTERN}$"},
                    }
                ],
                "responses": {
                    "200": {"description": "Signed in; on to /status.", "content": html},
                    "303": see_other,
                    "400": _PROBLEM,
                    "503": _PROBLEM,
                },
            }
        },
    }
