"""Templates, the page route class (errors become HTML pages with the right status), flash messages and
the server-drawn SVG of the dataset state table."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup, escape

from service.console import figures
from service.console.sessions import SignInRequired
from service.datasets.models import DatasetStatus
from service.datasets.transitions import TRANSITIONS
from service.deps import UnitOfWorkRoute
from service.errors import ApiError

HERE = Path(__file__).resolve().parent
# autoescape on for every template: everything a user typed (purposes, reasons, names) renders as text.
ENV = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True)

# Messages shown after a redirect are chosen by code from this table, never echoed from the URL.
FLASH = {
    "voted": "Your vote was recorded.",
    "revoked": "The release was revoked and its files deleted.",
    "retried": "Generation was restarted; finished shards are kept.",
    "cancelled": "The request was cancelled.",
    "requested": "Your request was sent to the hospital for review.",
    "published": "The model version is published.",
    "retired": "The model version is retired.",
    "updated": "The account was updated.",
    "key_revoked": "The key was revoked; sessions opened with it have ended.",
    "signed_out": "You are signed out.",
}


def _filesize(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


ENV.filters["filesize"] = _filesize
ENV.filters["pct"] = _pct
ENV.globals["quality"] = figures.quality


def render(request: Request, template: str, status_code: int = 200, headers: dict | None = None, **context) -> HTMLResponse:
    flash = FLASH.get(request.query_params.get("done", ""))
    html = ENV.get_template(template).render(request=request, flash=flash, **context)
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store", **(headers or {})})


def error_page(request: Request, status_code: int, message: str, caller=None, headers: dict | None = None) -> HTMLResponse:
    titles = {401: "Sign-in required", 403: "Not allowed", 404: "Not found", 409: "Not possible now",
              410: "Gone", 413: "Too large", 422: "Invalid input", 429: "Too many attempts", 503: "Unavailable"}
    return render(request, "error.html", status_code=status_code, headers=headers, caller=caller,
                  title=titles.get(status_code, "Error"), message=message)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


class PageRoute(UnitOfWorkRoute):
    """A console page: one unit of work in one thread hop (as the REST routes); domain errors render an
    error page with their status instead of the JSON shape; a missing or ended session sends the
    browser to the sign-in page."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def page_handler(request: Request):
            try:
                return await handler(request)
            except SignInRequired:
                return redirect("/ui/login")
            except ApiError as exc:
                return error_page(request, exc.status_code, exc.message, headers=exc.headers)
            except RequestValidationError as exc:
                loc = exc.errors()[0].get("loc", ()) if exc.errors() else ()
                if loc and loc[0] == "path":  # /ui/datasets/not-a-uuid is simply not a page
                    return error_page(request, 404, "There is no such page.")
                return error_page(request, 422, "The form or address is not valid: "
                                  + str(exc.errors()[0].get("msg", "invalid value")))

        return page_handler


# ---------------------------------------------------------------- state diagram


def _layout() -> dict[DatasetStatus, tuple[int, int]]:
    """Column = shortest distance from pending_review along the table; rows in table order. A status
    entered from several columns (cancelled) goes to a lane below the others, under its last source."""
    depth = {DatasetStatus.pending_review: 0}
    frontier = [DatasetStatus.pending_review]
    while frontier:
        nxt = []
        for s in frontier:
            for t in TRANSITIONS:
                if t.source == s and t.target not in depth:
                    depth[t.target] = depth[s] + 1
                    nxt.append(t.target)
        frontier = nxt
    sources: dict[DatasetStatus, set[int]] = defaultdict(set)
    for t in TRANSITIONS:
        sources[t.target].add(depth[t.source])
    shared = {s for s, cols in sources.items() if len(cols) > 2}
    rows: dict[int, int] = defaultdict(int)
    pos = {}
    for s, col in depth.items():
        if s not in shared:
            pos[s] = (col, rows[col])
            rows[col] += 1
    lane = max(rows.values())
    for s in shared:
        pos[s] = (max(sources[s]), lane)
    return pos


def state_diagram(current: str | None = None) -> Markup:
    """The transition table as an SVG (boxes per status, one arrow per transition), the current status
    filled. Drawn from service.datasets.transitions.TRANSITIONS, like docs/dataset-states.md."""
    pos = _layout()
    bw, bh, gx, gy = 120, 34, 70, 30
    width = (max(c for c, _ in pos.values()) + 1) * (bw + gx)
    height = (max(r for _, r in pos.values()) + 1) * (bh + gy) + 40

    def box(s):
        c, r = pos[s]
        return 10 + c * (bw + gx), 36 + r * (bh + gy)

    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="states" viewBox="0 0 {width} {height}" '
              f'role="img" aria-label="dataset states">'),
             ('<defs><marker id="arr" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
              'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>')]
    for t in TRANSITIONS:
        (x1, y1), (x2, y2) = box(t.source), box(t.target)
        if x2 < x1:  # a way back (retry): from the source's left side, over the top row
            top = 16
            d = f"M{x1},{y1 + bh / 2} H{x1 - gx / 2} V{top} H{x2 + bw / 2} V{y2}"
            lx, ly = (x1 + x2 + bw / 2) / 2, top - 4
        elif y2 > y1 + bh + gy and x2 > x1:  # down to the lane below: through the gap after the source column
            gap_x = x1 + bw + gx * (0.3 if x2 - x1 > bw + gx else 0.55)
            d = f"M{x1 + bw},{y1 + bh * 0.75} H{gap_x} V{y2 + bh / 2} H{x2}"
            lx, ly = gap_x + 14, (y1 + y2 + bh) / 2 + 10
        elif x2 > x1:
            d = f"M{x1 + bw},{y1 + bh / 2} L{x2},{y2 + bh / 2}"
            lx, ly = (x1 + bw + x2) / 2, (y1 + y2 + bh) / 2 - 3
        else:
            d = f"M{x1 + bw / 2},{y1 + bh} L{x2 + bw / 2},{y2}"
            lx, ly = x1 + bw / 2 + 20, (y1 + bh + y2) / 2
        who = ", ".join(sorted(t.by))
        parts.append(f'<path d="{d}" fill="none" stroke="#555" marker-end="url(#arr)">'
                     f'<title>{escape(t.action)} ({escape(who)})</title></path>'
                     f'<text x="{lx}" y="{ly}" font-size="9" text-anchor="middle" fill="#333">{escape(t.action)}</text>')
    for s in pos:
        x, y = box(s)
        on = current == s.value
        parts.append(f'<rect x="{x}" y="{y}" width="{bw}" height="{bh}" rx="6" fill="{"#1d4e89" if on else "#eef2f7"}" '
                     f'stroke="#1d4e89"/><text x="{x + bw / 2}" y="{y + bh / 2 + 4}" font-size="12" text-anchor="middle" '
                     f'fill="{"#fff" if on else "#111"}">{escape(s.value)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
