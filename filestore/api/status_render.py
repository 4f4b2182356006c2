"""HTML and inline SVG for the operator status page (``/status``).

Everything here is a pure function of the figures handed in: no I/O, no
JavaScript, no external asset. The one stylesheet is inline and allowed by
its hash in the Content-Security-Policy (:data:`STYLE_HASH`); the charts are
SVG elements styled by class, so no ``style`` attribute is needed. Every
value that reaches the page goes through :func:`_e` (``html.escape`` with
quotes), numbers and times included, whatever their source.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from filestore.metadata.base import PassRecord

HOUR = 3600.0
DAY = 24 * HOUR
#: Bins of the purge-lag chart: 15 minutes each over the last 24 hours.
LAG_BINS = 96
#: Rows of the pass table (the chart covers the whole day).
HISTORY_ROWS = 20

CSS = """
:root{color-scheme:light;--ink:#1d2430;--mute:#5b6575;--line:#d9dee7;--bg:#f5f7fa;
--ok:#1f7a4d;--warn:#a86400;--bad:#b3261e;--bar:#3266c2;--lag:#7b4bb7}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--ink);
background:var(--bg)}
header{display:flex;gap:16px;align-items:center;justify-content:space-between;
padding:14px 24px;background:#fff;border-bottom:1px solid var(--line)}
header h1{font-size:18px;margin:0}
header p{margin:2px 0 0;color:var(--mute)}
main{max-width:1100px;margin:0 auto;padding:16px 24px 40px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 18px;
margin:14px 0}
h2{font-size:15px;margin:0 0 10px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:12px;
background:none;border:0;padding:0}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.card .label{color:var(--mute);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:24px;font-weight:600;margin:2px 0}
.card .detail{color:var(--mute);font-size:12px}
.state-ok{color:var(--ok)}.state-failing,.state-failed{color:var(--bad)}
.state-behind,.state-stale,.state-unknown{color:var(--warn)}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);
font-variant-numeric:tabular-nums;vertical-align:top}
th{color:var(--mute);font-weight:600;font-size:12px}
td.num,th.num{text-align:right}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
background:#eef1f5}
.badge.ok{background:#e3f4ea;color:var(--ok)}
.badge.failing{background:#fbe5e3;color:var(--bad)}
.badge.unknown{background:#fff2dc;color:var(--warn)}
.muted{color:var(--mute)}
.note{padding:8px 12px;border-radius:6px;background:#fff2dc;margin:0 0 12px}
svg.chart{display:block;width:100%;max-width:760px;height:auto}
svg .bar{fill:var(--bar)}svg .lag{fill:var(--lag)}svg .gap{fill:#c9ced8}
svg .axis{stroke:#8a93a3;stroke-width:1}svg .grid{stroke:#e6e9ef;stroke-width:1}
svg .alert{stroke:var(--bad);stroke-width:1;stroke-dasharray:4 3}
svg text{fill:var(--mute);font-size:11px}
svg text.alert-label{fill:var(--bad)}
form.inline{margin:0}
button{font:inherit;padding:6px 14px;border:1px solid #9aa5b8;border-radius:6px;background:#fff;
cursor:pointer}
.login{max-width:420px;margin:80px auto}
.login input{width:100%;font:inherit;padding:8px;margin:6px 0 12px;border:1px solid #9aa5b8;
border-radius:6px}
footer{color:var(--mute);font-size:12px;margin-top:18px}
"""
#: The Content-Security-Policy source that allows exactly :data:`CSS`.
STYLE_HASH = "'sha256-" + base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode() + "'"


@dataclass(frozen=True)
class KekEpoch:
    """One key-encryption key as the page lists it: never key bytes."""

    kek_id: int
    created_at: float
    #: When it is (or was) due for destruction; None while it is the active
    #: keyring KEK (its deadline counts from its retirement).
    deadline: float | None
    #: ``active``, ``retired``, ``past deadline`` or ``destroyed, record pending``.
    state: str


@dataclass(frozen=True)
class StatusView:
    """Everything the page shows."""

    now: float
    #: The ``/v1/purge/status`` document (the same figures, the same code).
    status: dict[str, Any]
    database: str
    storage: str
    #: Live files by remaining lifetime, one bucket per hour over 0-24 h;
    #: None when the database did not answer.
    lifetimes: list[int] | None
    #: The cluster's passes of the last 24 hours, oldest first; None when
    #: the database did not answer.
    history: list[PassRecord] | None
    history_truncated: bool
    key_schedule: str
    keks: list[KekEpoch]
    kek_rotation: float
    kek_destroy_after: float
    #: Who is looking: the operator key id, and when the session ends.
    key_id: str
    session_ends: float


UNKNOWN = "unknown: the database did not answer"


# ------------------------------------------------------------------ helpers
def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(seconds: float | None) -> str:
    """``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 1 h``."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = max(0.0, seconds)
    if s < 60:
        return f"{math.floor(s)} s" if s >= 10 or s == int(s) else f"{s:.1f} s"
    if s < HOUR:
        return f"{s // 60:.0f} min"
    if s < DAY:
        hours, rest = divmod(s, HOUR)
        return f"{hours:.0f} h {rest // 60:.0f} min" if rest >= 60 else f"{hours:.0f} h"
    days, rest = divmod(s, DAY)
    if rest >= HOUR:
        return f"{days:.0f} d {rest // HOUR:.0f} h"
    return f"{days:.0f} d {rest // 60:.0f} min" if rest >= 60 else f"{days:.0f} d"


def _parse_rfc3339(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _num(value: object) -> str:
    """A count for display (``1,234``), or ``unknown`` for None."""
    if value is None:
        return "unknown"
    if isinstance(value, int):
        return f"{value:,}"
    return _e(value)


def _badge(state: str) -> str:
    kind = state if state in ("ok", "failing") else "unknown"
    return f'<span class="badge {_e(kind)}">{_e(state)}</span>'


def _card(ident: str, label: str, value: str, raw: object, detail: str = "") -> str:
    shown = "" if raw is None else raw
    return (
        f'<div class="card"><div class="label">{_e(label)}</div>'
        f'<div class="value" id="{_e(ident)}" data-value="{_e(shown)}">{value}</div>'
        f'<div class="detail">{detail}</div></div>'
    )


def _table(headers: Sequence[tuple[str, bool]], rows: Iterable[Sequence[str]], ident: str) -> str:
    head = "".join(f"<th{' class=num' if num else ''}>{_e(h)}</th>" for h, num in headers)
    body = []
    for row in rows:
        cells = "".join(
            f"<td{' class=num' if num else ''}>{cell}</td>"
            for cell, (_h, num) in zip(row, headers, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>')
    return (
        f'<table id="{_e(ident)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


#: Grid steps of a duration axis (four steps to the top).
_DURATION_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)


def _nice_duration_top(value: float) -> float:
    """The top of a duration axis at or above ``value``: four round steps."""
    for step in _DURATION_STEPS:
        if 4 * step >= value:
            return 4.0 * step
    return 4.0 * math.ceil(value / 4 / 43200) * 43200


def _nice_max(value: float) -> float:
    """A round number at or above ``value`` for a chart's top."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


# ------------------------------------------------------------------- charts
_W, _H = 760, 230
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 14, 14, 34


def _frame(label: str, ident: str, top: float, fmt: Any, body: list[str], xlabels: str) -> str:
    inner_h = _H - _TOP - _BOTTOM
    grid = []
    for i in range(5):
        y = _TOP + inner_h * (1 - i / 4)
        grid.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(fmt(top * i / 4))}</text>'
        )
    return (
        f'<svg class="chart" id="{_e(ident)}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
        f'aria-label="{_e(label)}"><title>{_e(label)}</title>'
        + "".join(grid)
        + "".join(body)
        + f'<line class="axis" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{_H - _BOTTOM}" '
        f'y2="{_H - _BOTTOM}"/>' + xlabels + "</svg>"
    )


def lifetime_chart(counts: Sequence[int]) -> str:
    """Bars of live files by remaining lifetime, one per bucket over 0-24 h."""
    n = max(1, len(counts))
    width = (_W - _LEFT - _RIGHT) / n
    inner_h = _H - _TOP - _BOTTOM
    top = _nice_max(max(counts, default=0))
    bars = []
    for i, count in enumerate(counts):
        if count <= 0:
            continue
        height = max(1.0, inner_h * count / top)
        hours = 24 / n
        bars.append(
            f'<rect class="bar" data-bucket="{i}" data-count="{count}" '
            f'x="{_LEFT + i * width + 1:.1f}" y="{_H - _BOTTOM - height:.1f}" '
            f'width="{max(1.0, width - 2):.1f}" height="{height:.1f}">'
            f"<title>{_e(f'{i * hours:g}-{(i + 1) * hours:g} h left: {count:,} files')}</title>"
            "</rect>"
        )
    labels = "".join(
        f'<text x="{_LEFT + i * (n / 8) * width:.1f}" y="{_H - _BOTTOM + 16}" '
        f'text-anchor="middle">{_e(f"{i * 3} h")}</text>'
        for i in range(9)
    )
    return _frame(
        "Live files by remaining lifetime (hours)",
        "lifetime-chart",
        top,
        lambda v: f"{v:,.0f}" if top >= 4 else f"{v:g}",
        bars,
        labels,
    )


def lag_bins(history: Sequence[PassRecord], now: float) -> list[tuple[int, float] | None]:
    """The worst purge lag (``max_overdue``) of the passes that ended in
    each 15-minute bin of the last 24 hours, with their count; None where no
    pass ended."""
    width = DAY / LAG_BINS
    bins: list[tuple[int, float] | None] = [None] * LAG_BINS
    for p in history:
        index = min(math.floor((p.finished_at - (now - DAY)) / width), LAG_BINS - 1)
        if index < 0 or p.finished_at > now:
            continue
        old = bins[index]
        bins[index] = (
            (1, p.max_overdue) if old is None else (old[0] + 1, max(old[1], p.max_overdue))
        )
    return bins


def lag_chart(history: Sequence[PassRecord], now: float, interval: float) -> str:
    """The worst purge lag per 15 minutes over the last 24 hours, from the
    pass history; a dashed line at the alert level (two intervals). A grey
    tick marks a bin in which no pass ended."""
    bins = lag_bins(history, now)
    worst = max((b[1] for b in bins if b is not None), default=0.0)
    alert = 2 * interval
    top = _nice_duration_top(max(worst, alert) * 1.1)
    width = (_W - _LEFT - _RIGHT) / LAG_BINS
    inner_h = _H - _TOP - _BOTTOM
    start = now - DAY
    body = []
    for i, b in enumerate(bins):
        x = _LEFT + i * width
        when = fmt_time(start + i * DAY / LAG_BINS)
        if b is None:
            body.append(
                f'<rect class="gap" x="{x + 0.5:.1f}" y="{_H - _BOTTOM - 2}" '
                f'width="{max(1.0, width - 1):.1f}" height="2"/>'
            )
            continue
        passes, lag = b
        height = max(2.0, inner_h * lag / top)
        body.append(
            f'<rect class="lag" data-bin="{i}" data-lag="{lag:.3f}" data-passes="{passes}" '
            f'x="{x + 0.5:.1f}" y="{_H - _BOTTOM - height:.1f}" '
            f'width="{max(1.0, width - 1):.1f}" height="{height:.1f}">'
            f"<title>{_e(f'{when}: worst lag {fmt_duration(lag)} over {passes} passes')}</title>"
            "</rect>"
        )
    y = _TOP + inner_h * (1 - alert / top)
    body.append(
        f'<line class="alert" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        f'<text class="alert-label" x="{_W - _RIGHT - 4}" y="{y - 4:.1f}" text-anchor="end">'
        f"{_e(f'alert: 2 intervals ({fmt_duration(alert)})')}</text>"
    )
    labels = "".join(
        f'<text x="{_LEFT + i * (LAG_BINS / 4) * width:.1f}" y="{_H - _BOTTOM + 16}" '
        f'text-anchor="middle">{_e(label)}</text>'
        for i, label in enumerate(("-24 h", "-18 h", "-12 h", "-6 h", "now"))
    )
    return _frame(
        "Purge lag over the last 24 hours (worst overdue per 15 minutes)",
        "lag-chart",
        top,
        fmt_duration,
        body,
        labels,
    )


# -------------------------------------------------------------------- pages
def _document(title: str, body: str, head: str = "", referrer: str = "same-origin") -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="referrer" content="{_e(referrer)}">'
        f"{head}<title>{_e(title)}</title><style>{CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def purge_state(status: dict[str, Any], now: float) -> tuple[str, str]:
    """A one-word verdict on the purge, and why."""
    interval = float(status["scheduler"]["interval_seconds"])
    health = status.get("health") or {}
    failing_deps = sorted(k for k, v in health.items() if v != "ok")
    if failing_deps:
        return "failing", "dependency not ok: " + ", ".join(failing_deps)
    if status.get("failing_files"):
        return "failing", f"{status['failing_files']:,} files keep failing to purge"
    if status.get("backlog") is None:
        return "unknown", "the database did not answer"
    if float(status["most_overdue_seconds"]) > 2 * interval:
        return "behind", "the most overdue file is past two purge intervals"
    instances = (status.get("cluster") or {}).get("instances") or []
    newest = min((float(i["seconds_since_last_pass"]) for i in instances), default=None)
    if newest is None or newest > 2 * interval:
        return "stale", "no instance reported a pass in the last two intervals"
    return "ok", "every file past expiry is within two intervals of it"


def _scheduler_line(scheduler: dict[str, Any]) -> str:
    every = fmt_duration(float(scheduler["interval_seconds"]))
    if scheduler["running"]:
        mode = f"this instance purges every {every}"
    elif scheduler["keys_only"]:
        mode = "only the key step runs here; the purge runs elsewhere"
    else:
        mode = f"no timer here: passes run on request or elsewhere (interval {every})"
    if scheduler["pass_in_progress"]:
        mode += "; a pass is running now"
    nxt = scheduler.get("next_pass_at")
    if nxt:
        mode += f"; next pass {fmt_time(_parse_rfc3339(nxt))}"
    return mode


def render_status(view: StatusView) -> str:
    s = view.status
    now = view.now
    state, why = purge_state(s, now)
    interval = float(s["scheduler"]["interval_seconds"])
    oldest_age = s.get("oldest_live_file_age_seconds")
    cards = "".join(
        (
            _card(
                "purge-state",
                "Purge",
                f'<span class="state-{_e(state)}">{_e(state.upper())}</span>',
                state,
                _e(why),
            ),
            _card(
                "backlog",
                "Backlog",
                _num(s.get("backlog")),
                s.get("backlog"),
                "files past expiry, not yet purged",
            ),
            _card(
                "most-overdue",
                "Most overdue file",
                _e(fmt_duration(s.get("most_overdue_seconds"))),
                s.get("most_overdue_seconds"),
                _e(f"past expiry; worst here in 24 h {fmt_duration(s['max_overdue_seconds_24h'])}"),
            ),
            _card(
                "live-files",
                "Live files",
                _num(s.get("live_files")),
                s.get("live_files"),
                _e(f"oldest {fmt_duration(oldest_age)} old") if oldest_age is not None else "",
            ),
            _card(
                "failing-files",
                "Failing files",
                _num(s.get("failing_files")),
                s.get("failing_files"),
                "retrying with backoff; keys already erased",
            ),
            _card(
                "purged-total",
                "Purged here",
                _num(s.get("purged_total")),
                s.get("purged_total"),
                _e(f"files, in this process's {s['scheduler']['passes']:,} pass(es)"),
            ),
        )
    )
    sections = [
        f'<section class="cards">{cards}</section>',
        '<section><h2>Scheduler</h2><p id="scheduler">'
        + _e(_scheduler_line(s["scheduler"]))
        + "</p>"
        + (
            f'<p class="note">Last pass here reported: {_e(s["scheduler"]["last_error"])}</p>'
            if s["scheduler"].get("last_error")
            else ""
        )
        + (
            f'<p class="note">Erased key bytes are still in the database files '
            f"({_e(s['reclaim_blocked'])}); see docs/operations.md.</p>"
            if s.get("reclaim_blocked")
            else ""
        )
        + (
            f'<p class="note">KEKs due for destruction, settlement pending: '
            f"{_e(', '.join(str(k) for k in s['keks_held_back']))}</p>"
            if s.get("keks_held_back")
            else ""
        )
        + "</section>",
        _dependencies(s.get("health") or {}),
        "<section><h2>Files by remaining lifetime</h2>"
        + (
            lifetime_chart(view.lifetimes)
            if view.lifetimes is not None
            else f'<p class="muted">{UNKNOWN}</p>'
        )
        + '<p class="muted">Live files, by hours left until expiry; files already past '
        "expiry are the backlog above.</p></section>",
        "<section><h2>Purge lag over the last 24 hours</h2>"
        + (
            lag_chart(view.history, now, interval)
            if view.history is not None
            else f'<p class="muted">{UNKNOWN}</p>'
        )
        + '<p class="muted">How far past expiry the most overdue file each pass purged was, '
        "worst per 15 minutes, every instance; grey: no pass ended then"
        + (" (newest passes only)" if view.history_truncated else "")
        + ".</p></section>",
        _instances(s),
        _history(view.history),
        _failures(s),
        _keks(view),
    ]
    header = (
        "<header><div><h1>filestore status</h1>"
        f"<p>instance {_e(s['instance'])} · {_e(view.database)} · {_e(view.storage)} · "
        f'<span id="now">{_e(fmt_time(now))}</span></p></div>'
        '<form class="inline" method="post" action="/status/logout">'
        '<button type="submit" id="sign-out">Sign out</button></form></header>'
    )
    footer = (
        f"<footer>Signed in with operator key {_e(view.key_id)} until "
        f"{_e(fmt_time(view.session_ends))}. Figures as of the time above; reload for new "
        "ones. The JSON behind them: <code>GET /v1/purge/status</code>.</footer>"
    )
    return _document("filestore status", header + "<main>" + "".join(sections) + footer + "</main>")


def _unknown(title: str) -> str:
    return f'<section><h2>{_e(title)}</h2><p class="muted">{UNKNOWN}</p></section>'


def _dependencies(health: dict[str, str]) -> str:
    rows = [(f"{_e(name)}", _badge(state)) for name, state in health.items()]
    return (
        "<section><h2>Dependencies</h2>"
        + _table((("dependency", False), ("state", False)), rows, "dependencies")
        + "</section>"
    )


def _instances(s: dict[str, Any]) -> str:
    cluster = s.get("cluster")
    if cluster is None:
        return _unknown("Instances")
    rows = [
        (
            _e(i["instance"]) + (" (this one)" if i["instance"] == s["instance"] else ""),
            _e(fmt_time(_parse_rfc3339(i["last_pass_finished_at"]))),
            _e(fmt_duration(i["seconds_since_last_pass"])) + " ago",
            _num(i["purged"]),
            _num(i["failed"]),
            _e(fmt_duration(i["max_overdue_seconds"])),
            _e(i["error"] or "—"),
            _e(i["reclaim_blocked"] or "—"),
        )
        for i in cluster["instances"]
    ]
    headers = (
        ("instance", False),
        ("last pass ended", False),
        ("", False),
        ("purged", True),
        ("failed", True),
        ("worst overdue", True),
        ("error", False),
        ("reclaim", False),
    )
    return (
        "<section><h2>Instances (last pass of each)</h2>"
        + _table(headers, rows, "instances")
        + "</section>"
    )


def _history(history: list[PassRecord] | None) -> str:
    if history is None:
        return _unknown("Pass history")
    rows = [
        (
            _e(fmt_time(p.finished_at)),
            _e(p.instance),
            _e(fmt_duration(p.finished_at - p.started_at)),
            _num(p.purged),
            _num(p.failed),
            _e(fmt_duration(p.max_overdue)),
            _e(p.error or "—"),
        )
        for p in reversed(history[-HISTORY_ROWS:])
    ]
    headers = (
        ("ended", False),
        ("instance", False),
        ("took", True),
        ("purged", True),
        ("failed", True),
        ("worst overdue", True),
        ("error", False),
    )
    return (
        f"<section><h2>Pass history (newest {HISTORY_ROWS}, every instance)</h2>"
        + _table(headers, rows, "history")
        + "</section>"
    )


def _failures(s: dict[str, Any]) -> str:
    now_by = s.get("failing_files_by_error")
    total_by = s.get("failures_total_by_error") or {}
    failing = (
        f'<p class="muted">{UNKNOWN}</p>'
        if now_by is None
        else _table(
            (("error class", False), ("files", True)),
            [(_e(k), _num(v)) for k, v in sorted(now_by.items())],
            "failing-by-error",
        )
    )
    attempts = _table(
        (("error class", False), ("failed attempts", True)),
        [(_e(k), _num(v)) for k, v in sorted(total_by.items())],
        "attempts-by-error",
    )
    return (
        "<section><h2>Failures by class</h2>"
        '<p class="muted">Files failing now (whole cluster):</p>'
        + failing
        + '<p class="muted">Failed attempts in this process since it started:</p>'
        + attempts
        + "</section>"
    )


def _keks(view: StatusView) -> str:
    rows = [
        (
            _num(k.kek_id),
            _e(fmt_time(k.created_at)),
            _e(fmt_time(k.deadline))
            if k.deadline is not None
            else _e(f"{fmt_duration(view.kek_destroy_after)} after it retires"),
            _e(
                fmt_duration(k.deadline - view.now) if k.deadline and k.deadline > view.now else "—"
            ),
            _e(k.state),
        )
        for k in view.keks
    ]
    headers = (
        ("KEK id", True),
        ("created", False),
        ("destroyed at", False),
        ("in", True),
        ("state", False),
    )
    return (
        "<section><h2>KEK epochs</h2>"
        f'<p class="muted">Key schedule {_e(view.key_schedule)}: a new KEK every '
        f"{_e(fmt_duration(view.kek_rotation))}, each destroyed "
        f"{_e(fmt_duration(view.kek_destroy_after))} after it retires. Ids and times only.</p>"
        + _table(headers, rows, "keks")
        + "</section>"
    )


def render_login(note: str | None) -> str:
    messages = {
        "refused": "That key was refused: sign in with a live operator key.",
        "expired": "Your session has ended; sign in again.",
        "link": "That sign-in link is not valid (expired, used, altered, or its key revoked).",
        "signed-out": "Signed out.",
    }
    message = messages.get(note or "")
    body = (
        '<main class="login"><section><h1>filestore status</h1>'
        + (f'<p class="note" id="note">{_e(message)}</p>' if message else "")
        + '<form method="post" action="/status/login">'
        '<label for="api_key">Operator API key</label>'
        '<input id="api_key" name="api_key" type="password" autocomplete="off" required '
        'spellcheck="false">'
        '<button type="submit" id="sign-in">Sign in</button></form>'
        '<p class="muted">The key is sent once; the page then keeps a signed session '
        "cookie for at most 12 hours. Or run <code>filestore status-link</code> on the "
        "server for a one-time sign-in link.</p></section></main>"
    )
    return _document("filestore status: sign in", body)


def render_signed_in() -> str:
    """The answer to a sign-in link: the session cookie is set with it, and
    the page moves on to /status at once (a navigation of this site's own,
    so the SameSite=Strict cookie goes with it; the link leaves the address
    bar)."""
    body = (
        '<main class="login"><section><h1>Signed in</h1>'
        '<p><a href="/status">Continue to the status page</a>.</p></section></main>'
    )
    return _document(
        "filestore status: signed in",
        body,
        head='<meta http-equiv="refresh" content="0; url=/status">',
        referrer="no-referrer",
    )
