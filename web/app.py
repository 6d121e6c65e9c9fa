"""The gallery app: a thin, read-only layer over a Library (it only calls Library methods).

Files are only ever served by image id (an int route parameter looked up in the database), never
by a path taken from the request, and only while the stored path is still the regular file that
was ingested (`Library.open_image_file`), so no request can reach a file that is not in the
library, even after a photo was replaced by a symlink.

Pages are by key: `after` and `before` carry a path (its raw bytes, base64url), so page 5000
costs what page 1 costs and any name, UTF-8 or not, round-trips.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from vitdex.embedder import DecodeError
from vitdex.library import Library, display
from vitdex.library.errors import NotFoundError, VitdexError
from vitdex.web import thumbs
from vitdex.web.duplicates import DuplicateJobs
from vitdex.web.server import HostCheck
from vitdex.web.tiles import Tile, tile

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 100
NEIGHBOURS = 12
MAX_UPLOAD = 20 * 1024 * 1024
MAX_ID = 2**63 - 1  # SQLite's largest integer: a larger id cannot name an image
CHUNK = 256 * 1024  # bytes per read when streaming an original
REFRESH_SECONDS = 3  # how often the "computing…" duplicates page reloads itself
# Formats every browser shows as they are; others (HEIC, TIFF) are offered as a download.
BROWSER_FORMATS = {
    "JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp",
}  # fmt: skip
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


def encode_key(path: str) -> str:
    """A path as an opaque URL parameter: its raw bytes in base64url (lossless for any name)."""
    return base64.urlsafe_b64encode(os.fsencode(path)).decode().rstrip("=")


def decode_key(text: str, what: str) -> str:
    """The path an `encode_key` parameter carries; 400 for anything else."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise HTTPException(400, f"{what} is not a valid position") from exc
    if not raw or b"\0" in raw or encode_key(os.fsdecode(raw)) != text:
        raise HTTPException(400, f"{what} is not a valid position")
    return os.fsdecode(raw)


def image_id_of(request: Request) -> int:
    """The route's image id; 404 for one no database row can have."""
    image_id = request.path_params["image_id"]
    if image_id > MAX_ID:
        raise HTTPException(404, "no such image")
    return image_id


def attachment(disposition: str, name: str) -> str:
    """A Content-Disposition header for any file name (newlines, quotes, non-UTF-8 bytes)."""
    shown = display(name)
    ascii_name = shown.encode("ascii", "replace").decode().replace('"', "'")
    ascii_name = "".join(c if c.isprintable() else "_" for c in ascii_name)
    return f"{disposition}; filename=\"{ascii_name}\"; filename*=utf-8''{quote(shown)}"


def stream(file: BinaryIO) -> Iterator[bytes]:
    with file:
        while chunk := file.read(CHUNK):
            yield chunk


class Gallery:
    """What the handlers share: the library, the default feature, the duplicate jobs."""

    def __init__(self, library: Library, feature: str):
        self.library = library
        self.feature = feature
        # One search at a time: the embedder and the library's index cache are not thread-safe.
        self.search_lock = threading.Lock()
        self.duplicates = DuplicateJobs(library.folder, library.database)
        self._tags: tuple[int, list] | None = None

    def tags(self) -> list:
        """The tag filter's choices: counted over every image, so once per generation (labels
        change only with the vectors), not on every page."""
        generation = self.library.generation()
        if self._tags is None or self._tags[0] != generation:
            self._tags = (generation, self.library.tags())
        return self._tags[1]

    def features(self) -> list[str]:
        spec = self.library.spec
        return list(spec.features) if spec else [self.feature]

    def pick_feature(self, request: Request) -> str:
        feature = request.query_params.get("feature", self.feature)
        if feature not in self.features():
            raise HTTPException(400, f"unknown feature {feature!r}")
        return feature

    def tiles(self, hits: list[dict]) -> list[Tile]:
        """Tiles of search hits ({"id", "score"}) that are still stored, in order."""
        images = self.library.images(hit["id"] for hit in hits)
        return [tile(images[h["id"]], h["score"]) for h in hits if h["id"] in images]


def create_app(
    library: Library, *, feature: str = "cls", allowed_hosts: list[str] | None = None
) -> Starlette:
    """The gallery over an open library. `allowed_hosts` (see `server.allowed_hosts`) refuses
    other Host headers, so a web page cannot reach the server through DNS rebinding; None
    answers any Host."""
    gallery = Gallery(library, feature)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(features=gallery.features, default_feature=feature)

    def render(request: Request, template: str, status_code: int = 200, **context) -> Response:
        return templates.TemplateResponse(request, template, context, status_code=status_code)

    def home(request: Request) -> Response:
        params = request.query_params
        folder_key = params.get("folder") or None
        folder = decode_key(folder_key, "folder") if folder_key else None
        probe, _, label = params.get("label", "").partition("|")  # "probe name|label"
        probe, label = (probe, label) if probe and label else (None, None)
        tag = params.get("tag") or None  # the model's own top label
        after = decode_key(params["after"], "after") if params.get("after") else None
        before = decode_key(params["before"], "before") if params.get("before") else None
        if after and before:
            raise HTTPException(400, "give after or before, not both")
        with library.reading():  # the page, its count and its filters from one snapshot
            # One more than a page tells whether another page lies beyond.
            images, total = library.browse(under=folder, after=after, before=before,
                                           limit=PAGE_SIZE + 1, probe=probe, label=label,
                                           tag=tag)  # fmt: skip
            folders = [(encode_key(f), display(f)) for f in library.folders()]
            labels, tags = library.prediction_labels(), gallery.tags()
        more = len(images) > PAGE_SIZE
        if before:
            images = images[-PAGE_SIZE:] if more else images
            has_previous, has_next = more, True
        else:
            images = images[:PAGE_SIZE]
            has_previous, has_next = after is not None, more
        keep = {"folder": folder_key, "label": f"{probe}|{label}" if probe else None, "tag": tag}
        keep = {k: v for k, v in keep.items() if v}
        previous_url = next_url = None
        if images and has_previous:
            previous_url = "/?" + urlencode(keep | {"before": encode_key(images[0].path)})
        if images and has_next:
            next_url = "/?" + urlencode(keep | {"after": encode_key(images[-1].path)})
        return render(
            request, "gallery.html", tiles=[tile(image) for image in images], total=total,
            folder=folder_key or "", probe=probe, label=label,
            folders=folders, labels=labels, previous_url=previous_url, next_url=next_url,
            first_url="/?" + urlencode(keep), tag=tag, tags=tags,
        )  # fmt: skip

    def image_page(request: Request) -> Response:
        image = library.image(image_id_of(request))
        feature = gallery.pick_feature(request)
        neighbours, error = [], None
        try:
            with gallery.search_lock:
                found = library.search(image.path, k=NEIGHBOURS, feature=feature)
            neighbours = gallery.tiles(found["results"])
        except VitdexError as exc:
            error = str(exc)
        return render(
            request, "image.html", image=image, path=display(image.path),
            name=display(os.path.basename(image.path)), v=image.sha256[:12], feature=feature,
            neighbours=neighbours, error=error, predictions=library.predictions_of(image.id),
            own_labels=library.labels_of(image.id),
        )  # fmt: skip

    def cached_jpeg(request: Request, kind: str) -> Response:
        image_id = image_id_of(request)
        path = thumbs.cached(library.folder, library.image(image_id).sha256, kind)
        if path is None:
            image, file = library.open_image_file(image_id)  # only the file that was ingested
            try:
                with file:
                    path = thumbs.ensure(library.folder, image.sha256, file, kind,
                                         name=display(image.path))  # fmt: skip
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
        image, file = library.open_image_file(image_id_of(request))
        media_type = BROWSER_FORMATS.get(image.format or "", "application/octet-stream")
        inline = "inline" if image.format in BROWSER_FORMATS else "attachment"
        headers = {
            "Content-Length": str(os.fstat(file.fileno()).st_size),
            "Content-Disposition": attachment(inline, os.path.basename(image.path)),
        }
        return StreamingResponse(stream(file), media_type=media_type, headers=headers)

    async def upload(request: Request) -> Response:
        if request.method == "GET":
            return render(request, "upload.html", results=None, error=None, preview=None,
                          feature=gallery.pick_feature(request))  # fmt: skip
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
                      preview=preview, feature=feature, name=name)  # fmt: skip

    def search_upload(data: bytes, name: str, feature: str) -> tuple[list[Tile], str]:
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
        threshold = request.query_params.get("threshold", "").strip()
        try:
            value = float(threshold) if threshold else None
        except ValueError as exc:
            raise HTTPException(400, "threshold must be a number") from exc
        if value is not None and not (math.isfinite(value) and -1 <= value <= 1):
            raise HTTPException(400, "threshold must be a cosine, between -1 and 1")
        job = gallery.duplicates.get(library.generation(), feature, value)
        done = job.done.is_set()
        return render(
            request, "duplicates.html", status_code=200 if done else 202, computing=not done,
            refresh=REFRESH_SECONDS, groups=job.groups, error=job.error, used=job.threshold,
            feature=feature, threshold=threshold,
        )  # fmt: skip

    def status(request: Request) -> Response:
        data = library.status()
        return render(request, "status.html", status=data,
                      status_json=json.dumps(data, indent=2, default=str))  # fmt: skip

    def not_found(request: Request, exc: Exception) -> Response:
        return render(request, "error.html", status_code=404, message=str(exc))

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
    middleware = [Middleware(HostCheck, allowed=allowed_hosts)] if allowed_hosts else []
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            NotFoundError: not_found, VitdexError: vitdex_error, HTTPException: http_error,
        },
    )  # fmt: skip
    app.state.gallery = gallery
    return app
