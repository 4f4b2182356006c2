"""The operator status page: ``/status``, server-rendered, operators only.

Routes:

* ``GET /status`` — the page (``filestore.api.status_render``), for a valid
  session; anything else is sent to the sign-in form (303);
* ``GET /status/login`` — the sign-in form; ``POST /status/login`` takes an
  operator API key from the form's ``api_key`` field (never from a URL),
  and answers with the session cookie and a 303 to ``/status``, or a 303
  back to the form (``?note=refused``);
* ``POST /status/logout`` — clears the cookie;
* ``GET /status/link?token=…`` — a one-time sign-in link made by
  ``filestore status-link``: sets the cookie and moves on to ``/status``.

**Sessions** (``filestore.sessions``): the cookie ``filestore_status``
holds the key id and the end of the session (at most 12 h), HMAC-signed
under a sub-key of the shared link-signing secret; HttpOnly, SameSite=Strict,
``Path=/status``, Secure when the request came over https (directly or as
``X-Forwarded-Proto: https``). Every request re-reads the key: a revoked key,
or one that is not an operator's, ends the session there.

**CSRF**: the cookie is SameSite=Strict, so no other site's request carries
it; and the two POSTs (sign-in, sign-out) are refused (403) when the browser
says they came from elsewhere: an ``Origin`` other than this site's
(scheme and ``Host``), or ``Sec-Fetch-Site`` other than ``same-origin``. A
client that sends neither (curl) is not a browser a forged form could drive.
No token is needed on top.

Every page answer carries a strict Content-Security-Policy (nothing but the
page's own inline stylesheet, by hash, and ``data:`` images), frame denial,
``same-origin`` referrers (``no-referrer`` for the sign-in link's answer) and
``no-store``.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web

from filestore.api.context import services
from filestore.api.ops import status_document
from filestore.api.request_info import note_tenant
from filestore.api.status_render import (
    DAY,
    STYLE_HASH,
    KekEpoch,
    StatusView,
    render_login,
    render_signed_in,
    render_status,
)
from filestore.auth import authenticate
from filestore.config import Settings
from filestore.crypto.keyring import Keyring
from filestore.crypto.schedule import KekSource, RatchetKeys
from filestore.errors import AuthError, BadRequest, FilestoreError, Forbidden
from filestore.metadata.base import ApiKeyRecord, Role
from filestore.sessions import LINK_TOKEN_PATTERN, Session, SessionSigner, UsedLinks

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

COOKIE = "filestore_status"
USED_LINKS = web.AppKey("status_used_links", UsedLinks)
NOTES = ("refused", "expired", "link", "signed-out")
#: Passes read for the page's chart and table (the newest, if there are more).
HISTORY_LIMIT = 10_000
#: KEK epochs listed at most (the newest).
MAX_EPOCHS = 64
_LINK_TOKEN = re.compile(LINK_TOKEN_PATTERN)
_MAX_KEY_LENGTH = 256

HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src {STYLE_HASH}; img-src data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    # Not no-referrer: with it, browsers send "Origin: null" on the page's
    # own form posts, which the CSRF check must refuse.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def install(app: web.Application) -> None:
    """The page's own state: the sign-in links used in this process."""
    app[USED_LINKS] = UsedLinks()


# ------------------------------------------------------------------ helpers
def _signer(request: web.Request) -> SessionSigner:
    return SessionSigner(services(request).links)


def _https(request: web.Request) -> bool:
    forwarded = request.headers.get("X-Forwarded-Proto", "")
    return request.secure or forwarded.split(",")[0].strip().lower() == "https"


def _page(body: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=body, content_type="text/html", charset="utf-8", headers={**HEADERS, **(headers or {})}
    )


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={**HEADERS, "Location": location})


def _set_session(request: web.Request, response: web.StreamResponse, key_id: str) -> None:
    now = services(request).clock.now()
    value, expires = _signer(request).session(key_id, now)
    response.set_cookie(
        COOKIE,
        value,
        max_age=max(1, int(expires - now)),
        path="/status",
        httponly=True,
        samesite="Strict",
        secure=_https(request),
    )


def _clear_session(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(
        COOKIE, path="/status", httponly=True, samesite="Strict", secure=_https(request)
    )


def _same_origin(request: web.Request) -> None:
    """Refuse a form posted from another site (see the module docstring)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden("this form may be posted only from the status page itself")
    origin = request.headers.get("Origin")
    if origin is not None:
        expected = f"{'https' if _https(request) else 'http'}://{request.host}"
        if origin.lower() != expected.lower():
            raise Forbidden("this form may be posted only from the status page itself")


def _is_operator(record: ApiKeyRecord | None) -> bool:
    """A live operator key (a revoked one, or another role, is not)."""
    return record is not None and record.revoked_at is None and record.role == Role.OPERATOR


async def _session(request: web.Request) -> tuple[ApiKeyRecord, Session] | None:
    """The operator key of this request's session, if it is valid now."""
    value = request.cookies.get(COOKIE)
    if not value:
        return None
    svc = services(request)
    session = _signer(request).check_session(value, svc.clock.now())
    if session is None:
        return None
    record = await svc.metadata.api_keys.get(session.key_id)
    if record is None or not _is_operator(record):
        return None
    note_tenant(request, record.tenant)
    return record, session


def kek_epochs(keys: KekSource, settings: Settings, now: float) -> list[KekEpoch]:
    """The KEKs this instance holds (or destroyed and has yet to record):
    ids, creation and destruction times, never key bytes."""
    after = settings.kek_destroy_after
    epochs: list[KekEpoch] = []
    if isinstance(keys, RatchetKeys):
        ratchet = keys.ratchet
        current = ratchet.current_epoch(now)
        for epoch in range(max(ratchet.oldest_epoch, current - MAX_EPOCHS + 1), current + 1):
            deadline = ratchet.deadline(epoch, after)
            state = "active" if epoch == current else "retired"
            if now >= deadline:
                state = "past deadline"
            epochs.append(KekEpoch(epoch, ratchet.start_of(epoch), deadline, state))
        for epoch, when in sorted(keys.unaudited.items()):
            epochs.append(
                KekEpoch(epoch, ratchet.start_of(epoch), when, "destroyed, record pending")
            )
    elif isinstance(keys, Keyring):
        entries = sorted(keys.entries())[-MAX_EPOCHS:]
        for n, (kek_id, created) in enumerate(entries):
            retired = entries[n + 1][1] if n + 1 < len(entries) else None
            if kek_id == keys.active_id or retired is None:
                epochs.append(KekEpoch(kek_id, created, None, "active"))
                continue
            deadline = retired + after
            state = "past deadline" if now >= deadline else "retired"
            epochs.append(KekEpoch(kek_id, created, deadline, state))
        for stone in keys.tombstones():
            epochs.append(
                KekEpoch(
                    stone.kek_id, stone.created_at, stone.destroyed_at, "destroyed, record pending"
                )
            )
    return sorted(epochs, key=lambda k: k.kek_id)


async def _view(request: web.Request, record: ApiKeyRecord, session: Session) -> StatusView:
    svc = services(request)
    now = svc.clock.now()
    document = await status_document(request)
    try:
        lifetimes: list[int] | None = await svc.metadata.files.lifetime_histogram(now, 3600.0, 24)
    except FilestoreError:
        lifetimes = None
    try:
        history = await svc.metadata.cluster.pass_history(now - DAY, HISTORY_LIMIT)
    except FilestoreError:
        history = None
    settings = svc.settings
    return StatusView(
        now=now,
        status=document,
        database=svc.metadata.name,
        storage=svc.blobs.name,
        lifetimes=lifetimes,
        history=history,
        history_truncated=history is not None and len(history) >= HISTORY_LIMIT,
        key_schedule=settings.key_schedule,
        keks=kek_epochs(svc.keyring, settings, now),
        kek_rotation=svc.keyring.ratchet.period
        if isinstance(svc.keyring, RatchetKeys)
        else settings.kek_rotation,
        kek_destroy_after=settings.kek_destroy_after,
        key_id=record.key_id,
        session_ends=float(session.expires),
    )


# ------------------------------------------------------------------- routes
@routes.get("/status")
async def status_page(request: web.Request) -> web.Response:
    found = await _session(request)
    if found is None:
        had_cookie = COOKIE in request.cookies
        response = _redirect("/status/login?note=expired" if had_cookie else "/status/login")
        if had_cookie:
            _clear_session(request, response)
        return response
    return _page(render_status(await _view(request, *found)))


@routes.get("/status/login")
async def login_form(request: web.Request) -> web.Response:
    note = request.query.get("note")
    if note is not None and note not in NOTES:
        raise BadRequest(f"note must be one of {', '.join(NOTES)}")
    if note is None and await _session(request) is not None:
        return _redirect("/status")
    return _page(render_login(note))


@routes.post("/status/login")
async def login(request: web.Request) -> web.Response:
    _same_origin(request)
    if request.content_type != "application/x-www-form-urlencoded":
        raise BadRequest("send the sign-in form (application/x-www-form-urlencoded)")
    try:
        form = await request.post()
    except (ValueError, LookupError) as exc:  # undecodable bytes, an unknown charset
        raise BadRequest("the sign-in form could not be read") from exc
    values = form.getall("api_key", [])
    if len(values) != 1 or not isinstance(values[0], str) or not values[0]:
        raise BadRequest("the sign-in form has one api_key field, not empty")
    key = values[0].strip()
    svc = services(request)
    try:
        if len(key) > _MAX_KEY_LENGTH:
            raise AuthError("the API key is malformed or unknown")
        who = await authenticate(svc.metadata, f"Bearer {key}")
    except AuthError:
        return _redirect("/status/login?note=refused")
    note_tenant(request, who.tenant)
    if who.role != Role.OPERATOR:
        log.info("status page sign-in refused: key %s is not an operator's", who.key_id)
        return _redirect("/status/login?note=refused")
    response = _redirect("/status")
    _set_session(request, response, who.key_id)
    log.info("status page: operator key %s signed in", who.key_id)
    return response


@routes.post("/status/logout")
async def logout(request: web.Request) -> web.Response:
    _same_origin(request)
    response = _redirect("/status/login?note=signed-out")
    _clear_session(request, response)
    return response


@routes.get("/status/link")
async def sign_in_link(request: web.Request) -> web.Response:
    tokens = request.query.getall("token", [])
    if len(tokens) != 1 or not _LINK_TOKEN.fullmatch(tokens[0]):
        raise BadRequest("token must be one sign-in link token from `filestore status-link`")
    svc = services(request)
    now = svc.clock.now()
    sign_in = _signer(request).check_link(tokens[0], now)
    record = None if sign_in is None else await svc.metadata.api_keys.get(sign_in.key_id)
    if sign_in is None or not _is_operator(record):
        return _redirect("/status/login?note=link")
    if not request.app[USED_LINKS].claim(sign_in, now):
        return _redirect("/status/login?note=link")
    assert record is not None
    note_tenant(request, record.tenant)
    # The link's URL holds the token: it is sent on as nobody's referrer.
    response = _page(render_signed_in(), {"Referrer-Policy": "no-referrer"})
    _set_session(request, response, sign_in.key_id)
    log.info("status page: operator key %s signed in by link", sign_in.key_id)
    return response
