"""The gallery app: a thin, read-only layer over a Library.

Files are only ever served by image id (an int route parameter looked up in the database), never
by a path taken from the request, so no request can reach a file that is not in the library.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlencode

from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from vitdex.embedder import DecodeError
from vitdex.library import Library
from vitdex.library.errors import VitdexError
from vitdex.library.ingest import under_clause
from vitdex.storage import Content, Image, Prediction, Probe
from vitdex.web import thumbs

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 100
NEIGHBOURS = 12
MAX_UPLOAD = 20 * 1024 * 1024
# Formats every browser shows as they are; others (HEIC, TIFF) are offered as a download.
BROWSER_FORMATS = {
    "JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp",
}
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


class Gallery:
    """What the handlers share: the library, the default feature and small per-generation caches."""

    def __init__(self, library: Library, feature: str):
        self.library = library
        self.feature = feature
        # One search at a time: the embedder and the cached FAISS indexes are not shared safely.
        self.search_lock = threading.Lock()
        self._folders: tuple[int, list[str]] | None = None

    def features(self) -> list[str]:
        spec = self.library.spec
        return list(spec.features) if spec else [self.feature]

    def pick_feature(self, request: Request) -> str:
        feature = request.query_params.get("feature", self.feature)
        if feature not in self.features():
            raise HTTPException(400, f"unknown feature {feature!r}")
        return feature

    def folders(self) -> list[str]:
        """Every folder that directly holds an image, recomputed only when the library changes."""
        generation = self.library.generation()
        if self._folders is None or self._folders[0] != generation:
            with self.library.sessions() as session:
                paths = session.scalars(select(Image.path))
                self._folders = (generation, sorted({os.path.dirname(p) for p in paths}))
        return self._folders[1]

    def labels(self) -> list[tuple[str, str]]:
        """(probe name, label) pairs that have stored predictions, for the label filter."""
        with self.library.sessions() as session:
            return [tuple(row) for row in session.execute(
                select(Probe.name, Prediction.label)
                .join(Prediction, Prediction.probe_id == Probe.id)
                .distinct().order_by(Probe.name, Prediction.label)
            )]

    def image_row(self, image_id: int):
        with self.library.sessions() as session:
            row = session.execute(
                select(Image, Content).join(Content, Content.id == Image.content_id)
                .where(Image.id == image_id)
            ).first()
        if row is None:
            raise HTTPException(404, "no such image")
        return row

    def tiles(self, hits: list[dict]) -> list[dict]:
        """Search hits or duplicate members with what a tile needs (id, name, thumbnail version)."""
        paths = [hit["path"] for hit in hits]
        with self.library.sessions() as session:
            rows = session.execute(
                select(Image.id, Image.path, Content.sha256)
                .join(Content, Content.id == Image.content_id).where(Image.path.in_(paths))
            ).all()
        by_path = {row.path: row for row in rows}
        return [
            hit | {"id": by_path[hit["path"]].id, "v": by_path[hit["path"]].sha256[:12],
                   "name": os.path.basename(hit["path"])}
            for hit in hits if hit["path"] in by_path
        ]


def create_app(
    library: Library, *, feature: str = "cls", allowed_hosts: list[str] | None = None
) -> Starlette:
    """The gallery over an open library. `allowed_hosts` (e.g. LOOPBACK_HOSTS) refuses other Host
    headers, so a web page cannot reach a loopback server through DNS rebinding."""
    gallery = Gallery(library, feature)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(features=gallery.features, default_feature=feature)

    def render(request: Request, template: str, status_code: int = 200, **context) -> Response:
        return templates.TemplateResponse(request, template, context, status_code=status_code)

    def home(request: Request) -> Response:
        params = request.query_params
        folder = params.get("folder") or None
        probe, _, label = params.get("label", "").partition("|")  # "probe name|label"
        probe, label = probe or None, label or None
        try:
            page = max(1, int(params.get("page", "1")))
        except ValueError as exc:
            raise HTTPException(400, "page must be a number") from exc
        query = select(Image.id, Image.path, Content.sha256).join(
            Content, Content.id == Image.content_id
        )
        if folder:
            query = query.where(under_clause(Image.path, Path(folder)))
        if probe and label:
            query = query.join(Prediction, Prediction.image_id == Image.id).join(
                Probe, Probe.id == Prediction.probe_id
            ).where(Probe.name == probe, Prediction.label == label)
        with library.sessions() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery()))
            rows = session.execute(
                query.order_by(Image.path).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)
            ).all()
        pages = max(1, math.ceil(total / PAGE_SIZE))
        keep = {"folder": folder, "label": f"{probe}|{label}" if probe and label else None}
        keep = {k: v for k, v in keep.items() if v}
        return render(
            request, "gallery.html",
            tiles=[{"id": r.id, "name": os.path.basename(r.path), "v": r.sha256[:12]}
                   for r in rows],
            total=total, page=page, pages=pages, folder=folder or "", folders=gallery.folders(),
            probe=probe, label=label, labels=gallery.labels(),
            page_url=lambda n: "/?" + urlencode(keep | {"page": n}),
        )

    def image_page(request: Request) -> Response:
        image_id = request.path_params["image_id"]
        feature = gallery.pick_feature(request)
        image, content = gallery.image_row(image_id)
        neighbours, error = [], None
        try:
            with gallery.search_lock:
                found = library.search(image.path, k=NEIGHBOURS, feature=feature)
            neighbours = gallery.tiles(found["results"])
        except VitdexError as exc:
            error = str(exc)
        with library.sessions() as session:
            predictions = session.execute(
                select(Probe.name, Prediction.label, Prediction.score)
                .join(Probe, Probe.id == Prediction.probe_id).where(Prediction.image_id == image_id)
            ).all()
        return render(
            request, "image.html", image=image, content=content, name=os.path.basename(image.path),
            v=content.sha256[:12], feature=feature, neighbours=neighbours, error=error,
            predictions=predictions,
        )

    def cached_jpeg(request: Request, kind: str) -> Response:
        image, content = gallery.image_row(request.path_params["image_id"])
        try:
            path = thumbs.ensure(library.folder, content.sha256, image.path, kind)
        except DecodeError as exc:
            log.warning("no %s for image %d: %s", kind, image.id, exc)
            raise HTTPException(404, "the image file cannot be read") from exc
        # Small files: read here, in the handler's worker thread, rather than by FileResponse's
        # extra thread hops (stat, open, read), which doubled the time per thumbnail.
        return Response(path.read_bytes(), media_type="image/jpeg", headers=IMMUTABLE)

    def thumb(request: Request) -> Response:
        return cached_jpeg(request, "thumb")

    def large(request: Request) -> Response:
        return cached_jpeg(request, "large")

    def original(request: Request) -> Response:
        image, content = gallery.image_row(request.path_params["image_id"])
        if not os.path.isfile(image.path):
            raise HTTPException(404, "the image file is gone")
        media_type = BROWSER_FORMATS.get(content.format or "", "application/octet-stream")
        inline = content.format in BROWSER_FORMATS
        return FileResponse(
            image.path, media_type=media_type, filename=os.path.basename(image.path),
            content_disposition_type="inline" if inline else "attachment",
        )

    async def upload(request: Request) -> Response:
        if request.method == "GET":
            return render(request, "upload.html", results=None, error=None, preview=None,
                          feature=gallery.pick_feature(request))
        length = request.headers.get("content-length")
        if length is None:
            raise HTTPException(411, "the upload needs a Content-Length")
        if not length.isdigit() or int(length) > MAX_UPLOAD:
            raise HTTPException(413, f"uploads are limited to {MAX_UPLOAD // 2**20} MB")
        async with request.form(max_files=1, max_fields=4) as form:
            feature = form.get("feature") or gallery.feature
            if feature not in gallery.features():
                raise HTTPException(400, f"unknown feature {feature!r}")
            file = form.get("image")
            if file is None or isinstance(file, str):
                raise HTTPException(400, "no image in the upload (field 'image')")
            data = await file.read()
            name = file.filename or "upload"
        results, preview, error = [], None, None
        try:
            results, preview = await run_in_threadpool(search_upload, data, name, feature)
        except VitdexError as exc:
            error = str(exc)
        status = 200 if error is None else 400
        return render(request, "upload.html", status_code=status, results=results, error=error,
                      preview=preview, feature=feature, name=name)

    def search_upload(data: bytes, name: str, feature: str) -> tuple[list[dict], str]:
        """Neighbours of uploaded bytes, through the same decode and search as a query file.

        The bytes live in a temporary folder only for the search; the upload is never kept.
        """
        suffix = Path(name).suffix.lower()
        suffix = suffix if suffix[1:].isalnum() and suffix.isascii() and len(suffix) <= 6 else ""
        with tempfile.TemporaryDirectory(prefix="vitdex-query-") as tmp:
            path = Path(tmp) / f"query{suffix}"
            path.write_bytes(data)
            try:
                with gallery.search_lock:
                    found = library.search(path, k=NEIGHBOURS, feature=feature)
                encoded = base64.b64encode(thumbs.render(path, thumbs.THUMB_SIZE)).decode()
            except VitdexError as exc:  # name the upload, not the temporary file
                raise VitdexError(str(exc).replace(str(path), name)) from exc
        return gallery.tiles(found["results"]), f"data:image/jpeg;base64,{encoded}"

    def duplicates(request: Request) -> Response:
        feature = gallery.pick_feature(request)
        threshold = request.query_params.get("threshold")
        try:
            threshold_value = float(threshold) if threshold else None
        except ValueError as exc:
            raise HTTPException(400, "threshold must be a number") from exc
        try:
            from vitdex.library.dupes import find_duplicates
        except ImportError:
            return render(request, "duplicates.html", groups=None, feature=feature,
                          threshold=threshold or "")
        with gallery.search_lock:
            found = find_duplicates(library, threshold=threshold_value, feature=feature)
        groups = [group | {"tiles": gallery.tiles(group["members"])} for group in found["groups"]]
        return render(request, "duplicates.html", groups=groups, feature=feature,
                      threshold=threshold or "")

    def status(request: Request) -> Response:
        import json

        data = library.status()
        return render(request, "status.html", status=data,
                      status_json=json.dumps(data, indent=2, default=str))

    def vitdex_error(request: Request, exc: Exception) -> Response:
        return render(request, "error.html", status_code=400, message=str(exc))

    def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code < 400:
            return Response(status_code=exc.status_code, headers=exc.headers)
        return render(request, "error.html", status_code=exc.status_code, message=exc.detail)

    routes = [
        Route("/", home),
        Route("/image/{image_id:int}", image_page),
        Route("/thumb/{image_id:int}", thumb),
        Route("/large/{image_id:int}", large),
        Route("/file/{image_id:int}", original),
        Route("/search", upload, methods=["GET", "POST"]),
        Route("/duplicates", duplicates),
        Route("/status", status),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = (
        [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    )
    return Starlette(
        routes=routes, middleware=middleware,
        exception_handlers={VitdexError: vitdex_error, HTTPException: http_error},
    )
