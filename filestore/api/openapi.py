"""The OpenAPI 3.1 description of every route, served at ``/openapi.json``.

Kept as data next to the handlers. ``tests/unit/test_openapi_spec.py``
validates it against the OpenAPI 3.1 schema and checks that every registered
route is described here and nothing else is; ``tests/fuzz/test_schemathesis.py``
holds the gateway to it: every parameter schema states what the handler
accepts (no more, no less, where JSON Schema can say it), and every status,
content type and body the handler can answer is listed.
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
#: A duration as ``config.parse_duration`` reads it: a plain number of
#: seconds, or numbers that each carry a unit (``23h58m``).
_DURATION = {
    "type": "string",
    "pattern": r"^([0-9]+(\.[0-9]+)?|([0-9]+(\.[0-9]+)?[smhd])+)$",
    "maxLength": 64,
}
#: A file name as ``api.uploads.validate_filename`` accepts it: no path
#: separators or control characters (C0, DEL, C1), not "." or ".."; at most
#: 255 bytes of UTF-8 (JSON Schema counts characters, so maxLength is only the
#: bound for ASCII names).
_NAME_CHAR = r"[^/\\\x00-\x1f\x7f-\x9f]"
_FIRST_CHAR = r"[^./\\\x00-\x1f\x7f-\x9f]"
_FILENAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "pattern": rf"^({_FIRST_CHAR}{_NAME_CHAR}*|\.{_FIRST_CHAR}{_NAME_CHAR}*|\.\.{_NAME_CHAR}+)$",
}
#: The name of a form field other than the file: no control characters (a
#: part header cannot carry them; tab is allowed) and at most one ';' (see the
#: multipart body below).
_FIELD_CHAR = r"[^\x00-\x08\x0a-\x1f\x7f;]"
_FIELD_NAME = rf"^{_FIELD_CHAR}*(;{_FIELD_CHAR}*)?$"
#: A time bound as ``clock.parse_time`` reads it: an RFC 3339 time with a
#: zone, or Unix seconds, from 1970 up to (not including) 10^11 seconds (the
#: year pattern keeps RFC 3339 times inside that range); or empty, for none.
_TIME = {
    "type": "string",
    "anyOf": [
        {"format": "date-time", "pattern": "^(197[1-9]|19[89][0-9]|[2-4][0-9]{3})-"},
        {"pattern": r"^[0-9]{1,10}(\.[0-9]{1,6})?$"},
        {"maxLength": 0},
    ],
}
_JSON_OBJECT = {"application/json": {"schema": {"type": "object"}}}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_FILE_HEADERS = {
    "ETag": {"schema": {"type": "string"}, "required": True},
    "Content-Disposition": {"schema": {"type": "string"}, "required": True},
    "Expires": {"schema": {"type": "string"}, "required": True},
    "X-Expires-At": {"schema": {"type": "string", "format": "date-time"}, "required": True},
    "X-Checksum-SHA256": {
        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "required": True,
    },
    "Last-Modified": {"schema": {"type": "string"}, "required": True},
}
#: A signed link's query parameters, copied from the link as they are. Opaque
#: on purpose: a link that is malformed, forged or expired is answered like a
#: missing file (404), never 400, so it cannot probe which files exist; with
#: an API key they are not looked at.
_LINK_PARAMS = (
    {"name": "expires", "in": "query", "schema": {"type": "string"}},
    {"name": "signature", "in": "query", "schema": {"type": "string"}},
)
#: Where a file id in an answer leads (OpenAPI links, followed by stateful
#: fuzzing): what can be done next with the file.
_NEXT_FOR_FILE = ("downloadFile", "headFile", "createLink", "deleteFile", "getReceipt")


def _with_errors(responses: dict[str, Any], *extra: str) -> dict[str, Any]:
    out = dict(responses)
    for code in (*_ERRORS, *extra):
        out.setdefault(code, _PROBLEM)
    return out


def _links(expression: str, *operations: str) -> dict[str, Any]:
    return {
        op[0].upper() + op[1:]: {"operationId": op, "parameters": {"id": expression}}
        for op in operations
    }


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
                        "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"},
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
                "Receipt": {
                    "type": "string",
                    "description": "A C2SP tlog-proof: `c2sp.org/tlog-proof@v1`, `extra` "
                    "(base64 of the record's canonical JSON), `index` (seq - 1), the "
                    "RFC 6962 inclusion proof in base64 lines, an empty line, the checkpoint "
                    "note verbatim (docs/audit-log.md, Receipts).",
                    "pattern": "^c2sp\\.org/tlog-proof@v1\n",
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
                    "operationId": "uploadFile",
                    "summary": "Upload a file (raw body or multipart/form-data), streamed.",
                    "description": "A form's first part with a file name is the file; "
                    "other fields are read and discarded (at most 32 after the file).",
                    "parameters": [
                        {
                            "name": "ttl",
                            "in": "query",
                            "description": "Lifetime: seconds, or numbers with s, m, h or d "
                            "(23h58m); more than 0 and at most the server's max TTL.",
                            "schema": _DURATION,
                        },
                        {
                            "name": "filename",
                            "in": "query",
                            "description": "The file's name, a label, never a path: "
                            "at most 255 bytes of UTF-8. Overrides a Content-Disposition "
                            "header and a form part's file name.",
                            "schema": _FILENAME,
                        },
                        {
                            "name": "max_downloads",
                            "in": "query",
                            "description": "Delete the file after this many downloads.",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 999_999_999},
                        },
                        {
                            "name": "Content-Digest",
                            "in": "header",
                            "description": "Expected checksum, sha-256=:BASE64: (RFC 9530); "
                            "422 if the body differs.",
                            "schema": {
                                "type": "string",
                                "pattern": "^sha-256=:[A-Za-z0-9+/]{43}=:$",
                            },
                        },
                        {
                            "name": "X-Checksum-SHA256",
                            "in": "header",
                            "description": "Expected checksum as 64 hex characters; "
                            "422 if the body differs.",
                            "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
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
                                    "required": ["file"],
                                    "properties": {"file": {"type": "string", "format": "binary"}},
                                    # Other fields are read and discarded: at most 32 of
                                    # them, named without control characters (which no
                                    # part header may carry) and with at most one ';'
                                    # (aiohttp's Content-Disposition parser refuses a
                                    # quoted value with two).
                                    "maxProperties": 33,
                                    "propertyNames": {"pattern": _FIELD_NAME},
                                },
                                "encoding": {"file": {"contentType": "application/octet-stream"}},
                            },
                        },
                    },
                    "responses": _with_errors(
                        {
                            "201": {
                                "description": "Stored.",
                                "headers": {
                                    "Location": {"schema": {"type": "string"}, "required": True}
                                },
                                "content": {
                                    "application/json": {
                                        "schema": {"$ref": "#/components/schemas/File"}
                                    }
                                },
                                "links": _links("$response.body#/id", *_NEXT_FOR_FILE),
                            }
                        },
                        "408",
                        "413",
                        "415",
                        "422",
                        "507",
                    ),
                }
            },
            "/v1/files/{id}": {
                "parameters": [_ID_PARAM],
                "get": {
                    "operationId": "downloadFile",
                    "summary": "Stream the plaintext; a single Range is honoured.",
                    "description": "Authorised by an API key, or by a signed link's "
                    "expires and signature query parameters.",
                    "security": [{"bearer": []}, {}],
                    "parameters": [
                        *_LINK_PARAMS,
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
                                "description": "The whole file, as the content type it "
                                "was stored with (application/octet-stream if none).",
                                "headers": _FILE_HEADERS,
                                "content": {"*/*": {"schema": {"type": "string"}}},
                            },
                            "206": {
                                "description": "The requested range.",
                                "headers": {
                                    **_FILE_HEADERS,
                                    "Content-Range": {
                                        "schema": {"type": "string"},
                                        "required": True,
                                    },
                                },
                                "content": {"*/*": {"schema": {"type": "string"}}},
                            },
                            "304": {"description": "Not modified."},
                        },
                        "410",
                        "416",
                    ),
                },
                "head": {
                    "operationId": "headFile",
                    "summary": "The file's metadata in headers.",
                    "security": [{"bearer": []}, {}],
                    "parameters": [
                        *_LINK_PARAMS,
                    ],
                    "responses": _with_errors(
                        {"200": {"description": "Metadata.", "headers": _FILE_HEADERS}}, "410"
                    ),
                },
                "delete": {
                    "operationId": "deleteFile",
                    "summary": "Delete early: crypto-erase, blob removal, tombstone.",
                    "responses": _with_errors(
                        {
                            "204": {
                                "description": "Deleted.",
                                "links": _links("$request.path.id", "getReceipt", "downloadFile"),
                            },
                            "202": {"description": "Another worker is deleting it."},
                        },
                        "410",
                    ),
                },
            },
            "/v1/files/{id}/links": {
                "parameters": [_ID_PARAM],
                "post": {
                    "operationId": "createLink",
                    "summary": "A signed download URL, valid at most as long as the file.",
                    "parameters": [
                        {
                            "name": "ttl",
                            "in": "query",
                            "description": "How long the link is valid: more than 0; "
                            "never past the file's expiry.",
                            "schema": _DURATION,
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
                    "operationId": "getReceipt",
                    "summary": "The signed deletion receipt of a purged file, as a C2SP "
                    "tlog-proof: its audit record, Merkle inclusion proof and covering "
                    "checkpoint.",
                    "responses": _with_errors(
                        {
                            "200": {
                                "description": "The receipt (tlog-proof text).",
                                "content": {
                                    "text/plain": {
                                        "schema": {"$ref": "#/components/schemas/Receipt"}
                                    }
                                },
                            }
                        },
                        "409",
                    ),
                },
            },
            "/v1/purge/status": {
                "get": {
                    "operationId": "purgeStatus",
                    "summary": "Purge scheduler state, backlog, overdue times, failures, "
                    "health (operator).",
                    "responses": _with_errors(
                        {"200": {"description": "Status.", "content": _JSON_OBJECT}}
                    ),
                }
            },
            "/v1/cluster/join": {
                "post": {
                    "operationId": "clusterJoin",
                    "summary": "Hand the ratchet key schedule to a joining instance "
                    "(instances only; authenticated by the cluster secret in the body, "
                    "not by an API key). 404 unless this instance runs the ratchet.",
                    "security": [],
                    "requestBody": {
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        }
                    },
                    "responses": {
                        "200": {
                            "description": "The encrypted, authenticated answer.",
                            "content": {
                                "application/octet-stream": {
                                    "schema": {"type": "string", "format": "binary"}
                                }
                            },
                        },
                        "400": _PROBLEM,
                        "401": _PROBLEM,
                        "404": _PROBLEM,
                        "503": _PROBLEM,
                    },
                }
            },
            "/v1/purge/run": {
                "post": {
                    "operationId": "purgeRun",
                    "summary": "Run a purge pass now and return its report (operator).",
                    "responses": _with_errors(
                        {"200": {"description": "The pass report.", "content": _JSON_OBJECT}}
                    ),
                }
            },
            "/v1/audit/deletions": {
                "get": {
                    "operationId": "auditDeletions",
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
                            "description": "RFC 3339 time with a zone, or Unix seconds; "
                            "inclusive. Empty means no bound.",
                            "schema": _TIME,
                        },
                        {
                            "name": "until",
                            "in": "query",
                            "description": "RFC 3339 time with a zone, or Unix seconds; "
                            "exclusive. Empty means no bound.",
                            "schema": _TIME,
                        },
                        {
                            "name": "consistency_from",
                            "in": "query",
                            "description": "Tree size of a checkpoint the auditor kept, at "
                            "most the newest checkpoint's; the export then proves it "
                            "consistent with the newest one.",
                            "schema": {
                                "type": "integer",
                                "minimum": 0,
                                "maximum": 999_999_999_999_999_999,
                            },
                        },
                    ],
                    "responses": _with_errors(
                        {
                            "200": {
                                "description": "JSONL (verifiable) or CSV.",
                                "content": {
                                    "application/x-ndjson": {"schema": {"type": "string"}},
                                    "text/csv": {"schema": {"type": "string"}},
                                },
                            }
                        }
                    ),
                }
            },
            "/v1/audit/checkpoint": {
                "get": {
                    "operationId": "auditCheckpoint",
                    "summary": "The newest signed checkpoint (a C2SP signed note) with "
                    "the witness cosignatures stored for it; 404 before the first one "
                    "is written.",
                    "responses": _with_errors(
                        {"200": {"description": "The signed note.", "content": _TEXT}}
                    ),
                }
            },
            "/v1/audit/consistency": {
                "get": {
                    "operationId": "auditConsistency",
                    "summary": "The RFC 9162 consistency proof from tree size `from` to "
                    "`to` (hex hashes), for witnesses.",
                    "parameters": [
                        {
                            "name": name,
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                        }
                        for name in ("from", "to")
                    ],
                    "responses": _with_errors(
                        {"200": {"description": "The proof.", "content": _JSON_OBJECT}}
                    ),
                }
            },
            "/v1/audit/cosignatures": {
                "post": {
                    "operationId": "auditAddCosignatures",
                    "summary": "A witness returns the checkpoint it fetched with its "
                    "cosignature line appended; kept if the witness is configured "
                    "(FILESTORE_AUDIT_WITNESSES) and the note is the one held at its "
                    "size (409 if it was re-signed since).",
                    "requestBody": {"required": True, "content": _TEXT},
                    "responses": _with_errors(
                        {
                            "200": {
                                "description": "The witnesses whose cosignatures were kept.",
                                "content": _JSON_OBJECT,
                            }
                        },
                        "409",
                    ),
                }
            },
            "/v1/audit/tile/{path}": {
                "get": {
                    "operationId": "auditTile",
                    "summary": "The log as C2SP tlog-tiles (auditor): a hash tile "
                    "`<L>/<N>[.p/<W>]`, an entry bundle `entries/<N>[.p/<W>]` (32-byte "
                    "record hashes) or a record bundle `records/<N>[.p/<W>]` (canonical "
                    "JSON), uint16 length-prefixed. Served once a stored checkpoint covers "
                    "it; a partial tile only at a width some checkpoint needs. A path "
                    "that names no tile is 404.",
                    "parameters": [
                        {
                            "name": "path",
                            "in": "path",
                            "required": True,
                            "description": "`<L>/<N>[.p/<W>]`, `entries/<N>[.p/<W>]` or "
                            "`records/<N>[.p/<W>]`; N as 3-digit elements, all but the last "
                            "prefixed `x` (1234067 is `x001/x234/067`); L 0..63, W 1..255, "
                            "without leading zeros.",
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": _with_errors(
                        {
                            "200": {
                                "description": "The tile or bundle.",
                                "content": {
                                    "application/octet-stream": {
                                        "schema": {"type": "string", "format": "binary"}
                                    }
                                },
                            }
                        }
                    ),
                }
            },
            "/v1/audit/public-key": {
                "get": {
                    "operationId": "auditPublicKey",
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
                    "responses": {
                        "200": {
                            "description": "The key.",
                            "content": {
                                "application/x-pem-file": {"schema": {"type": "string"}},
                                **_TEXT,
                            },
                        },
                        "400": _PROBLEM,
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (text format 1.0.0, prometheus_client).",
                    "security": [],
                    "responses": {"200": {"description": "Metrics.", "content": _TEXT}},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness.",
                    "security": [],
                    "responses": {"200": {"description": "Serving.", "content": _JSON_OBJECT}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: database and storage reachable.",
                    "security": [],
                    "responses": {
                        "200": {"description": "Ready.", "content": _JSON_OBJECT},
                        "503": {
                            "description": "A dependency is failing (the same JSON, "
                            "not a problem).",
                            "content": _JSON_OBJECT,
                        },
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "security": [],
                    "responses": {
                        "200": {"description": "OpenAPI 3.1 document.", "content": _JSON_OBJECT}
                    },
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
