"""The studio's Starlette app: pages (grid, image), htmx fragments and a small JSON API.

Every route is a thin view over `loraprep.studio.data.Dataset`; edits return the re-rendered
fragment plus any notice. Routes that read files or make thumbnails are plain functions, which
Starlette runs in its thread pool, so a slow decode never holds up the other requests. Access needs the session's random token (in the URL once, then an
HttpOnly SameSite=Strict cookie), and on a loopback bind the Host header must be loopback
(a web page elsewhere cannot reach the studio through DNS rebinding). Bad input is answered
with its reason (an unreadable image becomes a placeholder naming the problem), never a
server error page.
"""

from __future__ import annotations

import hmac
import html
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from loraprep.studio.data import LINT_CODES, Dataset, EditRefused, Entry
from loraprep.studio.filters import FilterError, describe_terms
from loraprep.studio.thumbs import ImageLoadError, ThumbCache, default_cache_dir

HERE = Path(__file__).parent
PAGE_SIZE = 120
"""Tiles per page of the grid; the next page loads when the last tile scrolls into view."""
COOKIE = "loraprep_studio"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
SHORTCUTS = [
    ("j / →", "next image"), ("k / ←", "previous image"), ("n", "next flagged image"),
    ("a", "accept the suggestion (add the trigger or drop the identity tags shown)"),
    ("z / ctrl+z", "undo"), ("y / ctrl+shift+z", "redo"), ("x", "reject / restore"), ("e", "edit the caption text"),
    ("g", "back to the grid"),
]


def _placeholder(reason: str) -> Response:
    text = html.escape(reason[-180:])
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256" viewBox="0 0 256 256">'
        '<rect width="256" height="256" fill="#3a1f1f"/><text x="12" y="40" fill="#ffb4b4" font-size="18" font-family="sans-serif">'
        'cannot show this image</text><foreignObject x="12" y="56" width="232" height="190"><div xmlns="http://www.w3.org/1999/xhtml" '
        f'style="color:#fdd;font:12px sans-serif;word-wrap:break-word">{text}</div></foreignObject></svg>'
    )
    return Response(svg, media_type="image/svg+xml", headers={"X-Loraprep-Reason": quote(reason[:300]), "Cache-Control": "no-store"})


class _Auth(BaseHTTPMiddleware):
    def __init__(self, app: Any, token: str | None, loopback: bool):
        super().__init__(app)
        self.token = token
        self.loopback = loopback

    async def dispatch(self, request: Request, call_next: Any) -> Response:
        if self.loopback:
            raw = request.headers.get("host") or ""
            host = raw[: raw.index("]") + 1] if raw.startswith("[") and "]" in raw else raw.rsplit(":", 1)[0]
            if host and host not in LOOPBACK_HOSTS and host != "testserver":
                return PlainTextResponse("studio: this server answers only on 127.0.0.1/localhost", status_code=403)
        if self.token is None or request.url.path.startswith("/static/"):
            return await call_next(request)
        given = request.query_params.get("token") or request.cookies.get(COOKIE) or request.headers.get("x-studio-token") or ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return PlainTextResponse("studio: open the address with ?token=... that `loraprep studio` printed", status_code=403)
        resp = await call_next(request)
        if request.query_params.get("token"):
            resp.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        return resp


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.filters["urlq"] = lambda s: quote(str(s), safe="")
    return env


def find_run_dir(dataset: Dataset | None, run_dir: Path | None) -> Path | None:
    """The run the page watches: the one asked for, else the project's `run/` once `train_bridge
    config` (or `loraprep run`) has written its run.json there."""
    if run_dir is not None:
        return Path(run_dir)
    project = getattr(dataset, "project", None) if dataset is not None else None
    if project is not None and (project.run / "run.json").is_file():
        return project.run
    return None


def create_run_app(run_dir: Path, *, token: str | None = None, loopback: bool = True, read_only: bool = False,
                   launch_args: list[str] | None = None, poll_s: float | None = None) -> Starlette:
    """The run page alone (`loraprep studio RUN_DIR` on a run folder): same auth, same routes."""
    from starlette.responses import RedirectResponse

    from loraprep.studio.run_page import RunWatch, run_routes

    if token is None and not loopback:
        raise ValueError("a studio bound to a non-loopback address needs a token")
    env = _env()
    watch = RunWatch(run_dir, launch_args=launch_args, read_only=read_only, **({"poll_s": poll_s} if poll_s else {}))

    def render(name: str, status: int = 200, headers: dict[str, str] | None = None, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("has_dataset", False)
        return HTMLResponse(env.get_template(name).render(**ctx), status_code=status, headers=headers)

    routes = [Route("/", lambda request: RedirectResponse("/run" + (f"?{request.url.query}" if request.url.query else ""))),
              *run_routes(watch, render), Mount("/static", StaticFiles(directory=HERE / "static"), name="static")]

    async def server_error(request: Request, exc: Exception) -> Response:
        return HTMLResponse(f'<div class="notice error" role="alert">studio: {html.escape(type(exc).__name__)}: {html.escape(str(exc))}</div>', status_code=500)

    app = Starlette(routes=routes, middleware=[Middleware(_Auth, token=token, loopback=loopback)], exception_handlers={Exception: server_error})
    app.state.run = watch
    return app


def create_app(dataset: Dataset, *, token: str | None = None, loopback: bool = True, cache_dir: Path | None = None,
               run_dir: Path | None = None, launch_args: list[str] | None = None) -> Starlette:
    """The studio for `dataset`. `token`: required on every request (None: none, loopback only).
    `run_dir`: the run the run page watches (default: the project's run/ when it has run.json)."""
    if token is None and not loopback:
        raise ValueError("a studio bound to a non-loopback address needs a token")
    env = _env()
    # read-only writes nothing into the folder: its thumbnails go to the user's cache
    thumbs = ThumbCache(cache_dir or default_cache_dir(dataset.project.state if dataset.project and not dataset.read_only else None))
    ds = dataset

    def render(name: str, status: int = 200, headers: dict[str, str] | None = None, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("ds", ds)
        return HTMLResponse(env.get_template(name).render(**ctx), status_code=status, headers=headers)

    def select(q: str) -> tuple[list[Entry], str | None]:
        try:
            return ds.select(q), None
        except FilterError as exc:
            return [], f"filter: {exc}"

    def tile_ctx(e: Entry) -> dict[str, Any]:
        return {"e": e, "tags": e.tags[:6], "badges": sorted(e.findings)}

    def grid_page(request: Request) -> Response:
        q = request.query_params.get("q", "")
        entries, error = select(q)
        freq = ds.tag_frequency(entries)
        return render(
            "grid.html", q=q, error=error, total=len(entries), all=len(ds.entries),
            tiles=[tile_ctx(e) for e in entries[:PAGE_SIZE]], next_page=1 if len(entries) > PAGE_SIZE else None,
            freq=freq.most_common(300), findings=sorted(ds.finding_counts(entries).items()), terms=describe_terms(),
            lint_codes=LINT_CODES, first=entries[0].id if entries else None,
        )

    def grid_fragment(request: Request) -> Response:
        q = request.query_params.get("q", "")
        raw_page = request.query_params.get("page", "0")
        page = int(raw_page) if raw_page.isdigit() else 0
        entries, _error = select(q)
        chunk = entries[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
        nxt = page + 1 if len(entries) > (page + 1) * PAGE_SIZE else None
        return render("tiles.html", q=q, tiles=[tile_ctx(e) for e in chunk], next_page=nxt)

    def neighbours(e: Entry, q: str) -> dict[str, str | None]:
        entries, _ = select(q)
        ids = [x.id for x in entries]
        if e.id not in ids:
            return {"prev": None, "next": None, "next_flagged": next((x.id for x in entries if x.findings), None), "pos": None, "n": len(ids)}
        i = ids.index(e.id)
        flagged = next((x.id for x in entries[i + 1:] if x.findings), None) or next((x.id for x in entries[:i] if x.findings), None)
        return {"prev": ids[i - 1] if i else None, "next": ids[i + 1] if i + 1 < len(ids) else None, "next_flagged": flagged,
                "pos": i + 1, "n": len(ids)}

    def image_ctx(e: Entry, q: str) -> dict[str, Any]:
        ds._read_caption(e)  # another tab or process may have changed it
        ds._lint(e)
        size, bucket, bucket_error = None, None, None
        src = e.source_path if e.source_path and e.source_path.exists() else e.path
        try:
            from PIL import Image

            with Image.open(src) as im:
                size = im.size
        except Exception as exc:  # noqa: BLE001 - any reason the file is unreadable is shown
            bucket_error = f"{src.name}: cannot read the image ({type(exc).__name__}: {exc})"
        try:
            with Image.open(e.path) as im:
                out_size = im.size
            from prep.buckets import bucket_label, bucket_spec_for

            choice = bucket_spec_for(ds.arch, ds.resolution).select(*out_size)
            bucket = f"{bucket_label(choice.bucket)} (image {out_size[0]}x{out_size[1]}, {ds.arch} at {ds.resolution})"
        except Exception as exc:  # noqa: BLE001
            bucket_error = bucket_error or f"{e.path.name}: cannot read the image ({type(exc).__name__})"
        boxes = []
        crop = e.crop or {}
        for f in crop.get("faces") or []:
            boxes.append({"kind": "face", "box": f[:4]})
        for c in crop.get("crop") or []:
            boxes.append({"kind": "crop", "box": c[:4]})
        override = ds.crop_override(e)
        if override:
            boxes.append({"kind": "override", "box": override["box"]})
        if size is None and crop.get("size"):
            size = tuple(crop["size"])
        suggestion = suggest(e)
        return {"e": e, "q": q, "nav": neighbours(e, q), "tokens": ds.tokens(e.text or ""), "bucket": bucket,
                "bucket_error": bucket_error, "size": size, "boxes": boxes, "layer": ds.layer(e), "tags": ds.pin_trigger(e.tags),
                "suggestion": suggestion, "shortcuts": SHORTCUTS, "override": override}

    def suggest(e: Entry) -> dict[str, str] | None:
        fix = ds.suggest(e)
        return {"label": fix[0], "text": fix[1]} if fix else None

    def caption_get(request: Request) -> Response:
        e = ds.entries.get(request.path_params["id"])
        if e is None:
            return refused(EditRefused(f"{request.path_params['id']}: no such image"), 404)
        return caption_fragment(e, request.query_params.get("q", ""))

    def image_page(request: Request) -> Response:
        item_id = request.path_params["id"]
        q = request.query_params.get("q", "")
        e = ds.entries.get(item_id)
        if e is None:
            return render("message.html", status=404, title="not found", message=f"{item_id}: no such image in {ds.images_dir}")
        return render("image.html", **image_ctx(e, q))

    def caption_fragment(e: Entry, q: str, notices: list[str] | None = None, error: str | None = None) -> HTMLResponse:
        ctx = image_ctx(e, q)
        return render("caption.html", notices=notices or [], error=error, **ctx)

    def _file(path: Path | None) -> Response:
        if path is None or not path.is_file():
            return _placeholder("the file is not there (moved or rejected)")
        return FileResponse(path)

    def thumb(request: Request) -> Response:
        e = ds.entries.get(request.path_params["id"])
        if e is None:
            return _placeholder("no such image")
        try:
            return FileResponse(thumbs.get(e.path), media_type="image/webp", headers={"Cache-Control": "max-age=86400"})
        except ImageLoadError as exc:
            e.findings["bad:image"] = str(exc)
            return _placeholder(str(exc))
        except OSError as exc:
            return _placeholder(f"{e.path}: {exc.strerror or exc}")

    def image_file(request: Request) -> Response:
        e = ds.entries.get(request.path_params["id"])
        if e is None:
            return _placeholder("no such image")
        which = request.query_params.get("which", "source")
        path = e.source_path if which == "source" and e.source_path and e.source_path.exists() else e.path
        try:
            from prep.images import load_image

            load_image(path, draft_size=(64, 64))
        except ImageLoadError as exc:
            return _placeholder(str(exc))
        except OSError as exc:
            return _placeholder(f"{path}: {exc}")
        return _file(path)

    async def form(request: Request) -> dict[str, Any]:
        data = await request.form()
        out: dict[str, Any] = {}
        for k, v in data.multi_items():
            if k == "ids":
                out.setdefault("ids", []).append(str(v))
            else:
                out[k] = str(v)
        return out

    def refused(exc: Exception, status: int = 400) -> HTMLResponse:
        return HTMLResponse(f'<div class="notice error" role="alert">{html.escape(str(exc))}</div>', status_code=status)

    async def api_caption(request: Request) -> Response:
        f = await form(request)
        try:
            e = ds.get(f.get("id", ""))
            _edit, notices = ds.set_captions({e.id: f.get("text", "")}, f"edit {e.id}", versions={e.id: f["version"]} if f.get("version") else None)
        except EditRefused as exc:
            return refused(exc, 403 if ds.read_only else 400)
        return caption_fragment(e, f.get("q", ""), notices)

    async def api_tag(request: Request) -> Response:
        f = await form(request)
        try:
            e = ds.get(f.get("id", ""))
            to = int(f["to"]) if f.get("to", "").lstrip("-").isdigit() else None
            _edit, notices = ds.tag_op(e.id, f.get("op", ""), f.get("tag", ""), to, version=f.get("version") or None)
        except EditRefused as exc:
            return refused(exc, 403 if ds.read_only else 400)
        return caption_fragment(e, f.get("q", ""), notices)

    def batch_ids(f: dict[str, Any]) -> list[str]:
        if f.get("scope") == "filtered":
            return [e.id for e in ds.select(f.get("q", ""))]
        return list(f.get("ids") or [])

    async def api_batch(request: Request) -> Response:
        f = await form(request)
        kw = {"tag": f.get("tag", ""), "new": f.get("new", ""), "pattern": f.get("pattern", ""), "regex": f.get("regex") in ("1", "on", "true")}
        try:
            ids = batch_ids(f)
            if not ids:
                raise EditRefused("nothing selected: tick images in the grid or choose 'the whole filtered set'")
            if f.get("preview"):
                plan = ds.batch_plan(ids, f.get("op", ""), **kw)
                return render("batch_preview.html", plan=list(plan.items())[:200], n=len(plan), of=len(ids), f=f)
            ds._writable()
            _edit, plan = ds.batch(ids, f.get("op", ""), **kw)
        except (EditRefused, FilterError) as exc:
            return refused(exc, 403 if ds.read_only else 400)
        return render("batch_done.html", n=len(plan), of=len(ids), q=f.get("q", ""), headers={"HX-Trigger": "studio-changed"})

    async def api_reject(request: Request) -> Response:
        f = await form(request)
        try:
            e = ds.get(f.get("id", ""))
            (ds.restore if e.rejected else ds.reject)(e.id)
        except EditRefused as exc:
            return refused(exc, 403 if ds.read_only else 400)
        state = "rejected: moved aside with its caption (restore brings it back)" if e.rejected else "restored"
        return HTMLResponse(f'<div class="notice" role="status" id="reject-state" data-rejected="{str(e.rejected).lower()}">{html.escape(e.id)} {state}</div>',
                            headers={"HX-Trigger": "studio-changed"})

    async def api_crop(request: Request) -> Response:
        f = await form(request)
        try:
            e = ds.get(f.get("id", ""))
            box = None if f.get("clear") else [float(f[k]) for k in ("x0", "y0", "x1", "y1")]
            _edit, snapped, bucket = ds.set_crop(e.id, box)
        except (KeyError, ValueError) as exc:
            return refused(EditRefused(f"crop box: {exc}" if not isinstance(exc, EditRefused) else str(exc)))
        msg = f"crop override: {snapped} snapped to the {bucket[0]}x{bucket[1]} bucket; prep crop / loraprep run use it" if snapped and bucket else "crop override removed"
        return HTMLResponse(f'<div class="notice" role="status" id="crop-state" data-box="{json.dumps(snapped)}">{html.escape(msg)}</div>')

    async def api_undo(request: Request) -> Response:
        redo = request.url.path.endswith("redo")
        try:
            edit = ds.redo() if redo else ds.undo()
        except EditRefused as exc:
            return refused(exc, 403)
        msg = f"{'redone' if redo else 'undone'}: {edit.label}" if edit else f"nothing to {'redo' if redo else 'undo'}"
        return HTMLResponse(f'<div class="notice" role="status">{html.escape(msg)}</div>', headers={"HX-Trigger": "studio-changed"})

    def api_items(request: Request) -> Response:
        q = request.query_params.get("q", "")
        try:
            entries = ds.select(q)
        except FilterError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"total": len(entries), "items": [
            {"id": e.id, "source": e.source_id, "caption": e.text, "findings": e.findings, "rejected": e.rejected, "edited": e.edited}
            for e in entries
        ]})

    def api_tags(request: Request) -> Response:
        prefix = request.query_params.get("prefix", "").strip().lower()
        freq = ds.tag_frequency(ds.entries.values())
        out = [{"tag": t, "count": n, "category": "dataset"} for t, n in freq.most_common() if t.lower().startswith(prefix)][:30]
        if len(out) < 30:
            seen = {o["tag"] for o in out}
            out += [{"tag": t, "count": 0, "category": c} for t, c in wd_tags() if t.startswith(prefix) and t not in seen][: 30 - len(out)]
        if request.query_params.get("format") == "options":
            return HTMLResponse("".join(f'<option value="{html.escape(o["tag"])}">{html.escape(o["category"])} {o["count"] or ""}</option>' for o in out))
        return JSONResponse(out)

    wd_cache: list[list[tuple[str, str]]] = []

    def wd_tags() -> list[tuple[str, str]]:
        """The WD tagger's tag list with categories, when the model is in the local HF cache."""
        if not wd_cache:
            wd_cache.append(_wd_tag_list())
        return wd_cache[0]

    async def shortcuts(request: Request) -> Response:
        return JSONResponse(SHORTCUTS)

    routes = [
        Route("/", grid_page),
        Route("/grid", grid_fragment),
        Route("/image/{id:path}", image_page),
        Route("/caption/{id:path}", caption_get),
        Route("/thumb/{id:path}", thumb),
        Route("/file/{id:path}", image_file),
        Route("/api/caption", api_caption, methods=["POST"]),
        Route("/api/tag", api_tag, methods=["POST"]),
        Route("/api/batch", api_batch, methods=["POST"]),
        Route("/api/reject", api_reject, methods=["POST"]),
        Route("/api/crop", api_crop, methods=["POST"]),
        Route("/api/undo", api_undo, methods=["POST"]),
        Route("/api/redo", api_undo, methods=["POST"]),
        Route("/api/items", api_items),
        Route("/api/tags", api_tags),
        Route("/api/shortcuts", shortcuts),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    watch = None
    run_at = find_run_dir(ds, run_dir)
    if run_at is not None:
        from loraprep.studio.run_page import RunWatch, run_routes

        from train_bridge.runspec import RunSpecError

        try:
            watch = RunWatch(run_at, launch_args=launch_args, read_only=ds.read_only)
        except RunSpecError:
            if run_dir is not None:
                raise  # asked for by --run: say why it cannot be watched
            watch = None  # the project's run/ is broken: the dataset pages still open (`train_bridge status` names the problem)
        if watch is not None:
            routes[-1:-1] = run_routes(watch, lambda name, status=200, headers=None, **ctx: render(name, status, headers, has_dataset=True, **ctx))
    env.globals["run_link"] = watch is not None

    async def server_error(request: Request, exc: Exception) -> Response:
        return HTMLResponse(f'<div class="notice error" role="alert">studio: {html.escape(type(exc).__name__)}: {html.escape(str(exc))}</div>', status_code=500)

    app = Starlette(routes=routes, middleware=[Middleware(_Auth, token=token, loopback=loopback)], exception_handlers={Exception: server_error})
    app.state.dataset = ds
    app.state.thumbs = thumbs
    app.state.run = watch
    env.globals["qs"] = lambda **kw: urlencode({k: v for k, v in kw.items() if v not in (None, "")})
    return app


def _wd_tag_list() -> list[tuple[str, str]]:
    names = {0: "general", 3: "copyright", 4: "character", 9: "rating"}
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache("SmilingWolf/wd-swinv2-tagger-v3", "selected_tags.csv")
    except Exception:  # noqa: BLE001 - no hub library or cache: no WD suggestions
        return []
    if not isinstance(hit, str):
        return []
    import csv

    out = []
    with open(hit, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                out.append((row["name"].replace("_", " "), names.get(int(row["category"]), "general")))
            except (KeyError, ValueError):
                continue
    return out
