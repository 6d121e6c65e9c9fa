"""Gallery benchmark: time to serve the first page of a 10k-image library once thumbnails exist.

    python bench/gallery.py [--images 10000] [--requests 30] [--out bench/out/gallery.md]

The library is built cheaply: 100 distinct generated photos (400x300 JPEG, EXIF-free), hard-linked
to 10k paths in 100 folders, and 10k Content/Image rows inserted directly through the storage
models (each row its own fake content hash, so each gets its own thumbnail; no model runs, and no
page needs one). Thumbnails are then warmed through the app's own cache code (timed).

Everything is served by uvicorn in a thread and fetched with one keep-alive httpx client, like a
browser tab. The reference is a static file with the same bytes as the first page, served by the
same uvicorn server through Starlette's StaticFiles, so the ratio is what rendering the page costs
over just shipping its bytes. p50 over --requests requests, after 3 warm-up requests.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from common import OUT, machine, photo_folder

SOURCES = 100


def build(folder: Path, n: int) -> Path:
    """A library of n images (rows and hard links), made once and reused."""
    from vitdex.library import Library
    from vitdex.storage import Content, Image

    library_folder = folder / "lib"
    if (folder / ".complete").exists():
        return library_folder
    sources = sorted(photo_folder("gallery-sources", [(SOURCES, (400, 300))]).rglob("*.jpg"))
    now = datetime.now(UTC)
    with Library.open(library_folder, create=True) as library, library.sessions.begin() as session:
        for i in range(n):
            path = folder / "photos" / f"f{i % 100:02d}" / f"img{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                os.link(sources[i % SOURCES], path)
            content = Content(sha256=hashlib.sha256(f"bench-{i}".encode()).hexdigest(),
                              width=400, height=300, format="JPEG")
            session.add(content)
            session.flush()
            session.add(Image(path=str(path), size=path.stat().st_size, mtime_ns=0,
                              content_id=content.id, generation=1, added_at=now))
    (folder / ".complete").touch()
    return library_folder


def warm_thumbnails(library) -> tuple[int, float]:
    """Render every missing thumbnail through the app's cache; (rendered, seconds)."""
    from sqlalchemy import select

    from vitdex.storage import Content, Image
    from vitdex.web import thumbs

    with library.sessions() as session:
        rows = session.execute(select(Content.sha256, Image.path).join(Image)).all()
    missing = [r for r in rows if not thumbs.cache_path(library.folder, r.sha256).is_file()]
    start = time.perf_counter()
    for row in missing:
        thumbs.ensure(library.folder, row.sha256, row.path)
    return len(missing), time.perf_counter() - start


def timed(client, url: str, requests: int) -> tuple[list[float], bytes]:
    body = b""
    for _ in range(3):
        body = client.get(url).raise_for_status().content
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        client.get(url).raise_for_status()
        times.append(time.perf_counter() - start)
    return times, body


def p50_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--out", type=Path, default=OUT / "gallery.md")
    args = parser.parse_args()

    import re

    import httpx
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    from vitdex.library import Library
    from vitdex.web import create_app, running
    from vitdex.web.app import PAGE_SIZE

    folder = OUT / f"gallery-{args.images}"
    library_folder = build(folder, args.images)
    reference = folder / "reference"
    reference.mkdir(exist_ok=True)
    with Library.open(library_folder) as library:
        rendered, seconds = warm_thumbnails(library)
        app = Starlette(routes=[
            Mount("/reference", StaticFiles(directory=reference)),
            Mount("/", create_app(library)),
        ])
        with running(app) as url, httpx.Client(base_url=url) as client:
            page = client.get("/").raise_for_status().content
            (reference / "page.html").write_bytes(page)
            rows: list[tuple[str, list[float], int]] = []
            pages = -(-args.images // PAGE_SIZE)
            middle = (pages + 1) // 2
            for name, path in [
                ("first page (HTML)", "/"),
                ("reference: same bytes, static file", "/reference/page.html"),
                (f"page {middle} of {pages}", f"/?page={middle}"),
                ("first page of one folder", f"/?folder={folder / 'photos' / 'f07'}"),
            ]:
                times, body = timed(client, path, args.requests)
                rows.append((name, times, len(body)))
            thumb_urls = re.findall(r'<img src="(/thumb/[^"]+)"', page.decode())
            with_thumbs = []
            for _ in range(max(3, args.requests // 5)):
                start = time.perf_counter()
                client.get("/").raise_for_status()
                for thumb in thumb_urls:
                    client.get(thumb).raise_for_status()
                with_thumbs.append(time.perf_counter() - start)

    page_ms, reference_ms = p50_ms(rows[0][1]), p50_ms(rows[1][1])
    lines = [
        f"Machine: {machine()}",
        f"Library: {args.images} images in 100 folders, {PAGE_SIZE} per page; p50 of"
        f" {args.requests} requests over one keep-alive connection to uvicorn on 127.0.0.1.",
        "",
        "| request | bytes | p50 (ms) | p90 (ms) |",
        "|---|---:|---:|---:|",
    ]
    for name, times, size in rows:
        p90 = statistics.quantiles(times, n=10)[-1] * 1000
        lines.append(f"| {name} | {size} | {p50_ms(times):.1f} | {p90:.1f} |")
    lines += [
        f"| first page + its {len(thumb_urls)} thumbnails, one after another | | "
        f"{p50_ms(with_thumbs):.1f} | |",
        "",
        f"First page / reference: **{page_ms / reference_ms:.1f}x** ({page_ms:.1f} ms vs"
        f" {reference_ms:.1f} ms); budget 300 ms.",
    ]
    if rendered:
        lines.append(f"Thumbnail warm-up: {rendered} rendered in {seconds:.1f} s"
                     f" ({rendered / seconds:.0f}/s, one thread, 400x300 JPEG sources).")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
