"""The gallery's findings of issue 9 ("Web"): each test failed on the gallery before the Store.

Identity of served files, the Host check on every bind, ids and cursors out of range, bounded
preview decoding, duplicates in the background, bounded statements per page, odd file names.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import threading
import types
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner
from PIL import Image as PILImage
from PIL import JpegImagePlugin
from sqlalchemy import event
from starlette.testclient import TestClient

from tests.photos import make_photo
from tests.test_web import build_library, link, tile_ids
from vitdex.cli.main import main as cli
from vitdex.library import Library
from vitdex.web import app as web_app
from vitdex.web import create_app, thumbs

NON_UTF8 = os.fsdecode(b"caf\xe9.jpg")
ODD_FOLDER = os.fsdecode(b"d\xefapos")


def small_library(root: Path, model: Path, photos: dict[str, tuple[int, int]]) -> Path:
    """A library of synthetic JPEGs: relative name -> size."""
    for seed, (name, size) in enumerate(photos.items()):
        make_photo(root / "photos" / name, size, seed=seed)
    folder = root / "lib"
    with Library.open(folder, create=True) as library:
        report = library.ingest([root / "photos"], model=str(model), device="cpu")
        assert report.failed == [] and report.added == len(photos)
    return folder


def by_name(library: Library) -> dict[str, int]:
    images, _ = library.browse(limit=1000)
    return {os.path.basename(image.path): image.id for image in images}


@pytest.fixture(scope="module")
def web_folder(tmp_path_factory, tiny_model) -> Path:
    return build_library(tmp_path_factory.mktemp("web-findings"), tiny_model)


@pytest.fixture
def library(web_folder):
    with Library.open(web_folder) as library:
        yield library


# --- 1. only the file that was ingested is served ---------------------------------------------
def test_file_thumb_and_large_serve_only_the_ingested_file(tmp_path, tiny_model):
    folder = small_library(tmp_path, tiny_model, {"a.jpg": (320, 240), "b.jpg": (320, 240)})
    secret = make_photo(tmp_path / "secret" / "shadow.jpg", (320, 240), seed=42)
    photo = tmp_path / "photos" / "a.jpg"
    original = photo.read_bytes()
    with Library.open(folder) as library, TestClient(create_app(library)) as client:
        image_id = by_name(library)["a.jpg"]
        shutil.rmtree(folder / "thumbs", ignore_errors=True)
        photo.rename(tmp_path / "a.jpg.bak")
        photo.symlink_to(secret)  # the stored path now points at someone else's file
        for kind in ("file", "thumb", "large"):
            response = client.get(f"/{kind}/{image_id}")
            assert response.status_code == 404, kind
            assert response.content != secret.read_bytes()
        assert not (folder / "thumbs").exists()  # nothing rendered from the secret

        photo.unlink()
        shutil.copyfile(secret, photo)  # a regular file, but not the one that was ingested
        for kind in ("file", "thumb", "large"):
            assert client.get(f"/{kind}/{image_id}").status_code == 404, kind

        photo.unlink()
        (tmp_path / "a.jpg.bak").rename(photo)  # the very file again: served
        served = client.get(f"/file/{image_id}")
        assert served.status_code == 200 and served.content == original
        assert served.headers["content-type"] == "image/jpeg"
        assert served.headers["content-length"] == str(len(original))
        assert client.get(f"/thumb/{image_id}").status_code == 200
        thumb = folder / "thumbs" / f"{library.image(image_id).sha256}.jpg"
        photo.rename(tmp_path / "gone.jpg")
        # A thumbnail cached by content hash is still served; the original is not.
        assert client.get(f"/thumb/{image_id}").content == thumb.read_bytes()
        assert client.get(f"/file/{image_id}").status_code == 404


# --- 2. the Host check is on for every specific bind -------------------------------------------
@pytest.mark.parametrize(
    "bind, base",
    [
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("127.0.0.2", "http://127.0.0.2:8000"),
        ("::1", "http://[::1]:8000"),
        ("localhost", "http://localhost:8000"),
        ("192.168.1.5", "http://192.168.1.5:8000"),
    ],
)
def test_the_host_check_is_on_for_every_bind(web_folder, monkeypatch, bind, base):
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    result = CliRunner().invoke(cli, ["serve", "--library", str(web_folder), "--host", bind])
    assert result.exit_code == 0, result.output
    assert served["host"] == bind and "warning" not in result.output
    with TestClient(served["app"], base_url=base) as client:
        assert client.get("/").status_code == 200
        assert client.get("/", headers={"host": "localhost:8000"}).status_code == 200
        for evil in ("evil.example", "evil.example:8000", "[::2]:8000", "127.0.0.1.evil.example"):
            assert client.get("/", headers={"host": evil}).status_code == 400, evil


def test_a_wildcard_bind_answers_any_host_and_warns(web_folder, monkeypatch):
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    result = CliRunner().invoke(cli, ["serve", "--library", str(web_folder), "--host", "0.0.0.0"])
    assert result.exit_code == 0 and "warning: bound to every interface" in result.output
    with TestClient(served["app"], base_url="http://photos.lan:8000") as client:
        assert client.get("/").status_code == 200


# --- 3. ids and positions out of range ----------------------------------------------------------
def test_huge_ids_and_bad_positions_are_404_or_400_never_500(library):
    with TestClient(create_app(library), raise_server_exceptions=False) as client:
        for id_ in (2**63, 2**63 - 1, 10**30):
            for kind in ("image", "file", "thumb", "large"):
                assert client.get(f"/{kind}/{id_}").status_code == 404, (kind, id_)
        for query in ("after=!!!", "after=%FF%FE", "before=@", "after=AA", "folder=***",
                      "after=YQ==&before=YQ"):  # fmt: skip
            assert client.get(f"/?{query}").status_code == 400, query
        # The old page numbers are gone: a huge one is ignored, never an OFFSET overflow.
        assert client.get("/?page=99999999999999999999").status_code == 200
        assert client.get("/?page=-5").status_code == 200


# --- 4. a preview decodes a reduced image --------------------------------------------------------
def test_large_preview_asks_the_jpeg_decoder_for_a_reduced_size(tmp_path, tiny_model, monkeypatch):
    folder = small_library(tmp_path, tiny_model, {"big.jpg": (3200, 2400)})
    decoded: list[tuple[int, int]] = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = draft(self, mode, size)
        decoded.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    monkeypatch.setitem(thumbs.SIZES, "large", 400)
    with Library.open(folder) as library, TestClient(create_app(library)) as client:
        image_id = by_name(library)["big.jpg"]
        response = client.get(f"/large/{image_id}")
    assert response.status_code == 200
    assert PILImage.open(io.BytesIO(response.content)).size == (400, 300)
    # libjpeg decoded at 1/4 scale: at most twice the preview's side, not the 7.7 MP original.
    assert decoded and max(decoded[-1]) <= 2 * 400


# --- 5. duplicates in the background, once per generation --------------------------------------
def test_duplicates_run_in_the_background_once_per_generation(tmp_path, tiny_model, monkeypatch):
    folder = small_library(tmp_path, tiny_model, {"a.jpg": (320, 240), "b.jpg": (320, 240)})
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow(library, *, threshold=None, feature="cls", **kwargs):
        calls.append((feature, threshold))
        started.set()
        release.wait(60)
        return {"groups": [], "threshold": 0.9, "feature": feature}

    fake = types.ModuleType("vitdex.library.dupes")
    fake.find_duplicates = slow
    monkeypatch.setitem(sys.modules, "vitdex.library.dupes", fake)
    pages = {}

    with Library.open(folder) as library:
        app = create_app(library)
        client = TestClient(app, raise_server_exceptions=False)

        def get(name: str, url: str) -> None:
            pages[name] = client.get(url)

        image_id = by_name(library)["a.jpg"]
        duplicates = threading.Thread(target=get, args=("duplicates", "/duplicates"))
        image = threading.Thread(target=get, args=("image", f"/image/{image_id}"))
        try:
            duplicates.start()
            assert started.wait(60)
            image.start()
            image.join(60)  # a guard against a deadlock, not a timing: it must not wait at all
            assert not image.is_alive(), "the image page waited for the duplicates"
            assert pages["image"].status_code == 200
            duplicates.join(60)
            assert not duplicates.is_alive(), "the duplicates GET computed them itself"
        finally:
            release.set()
        computing = pages["duplicates"]
        assert computing.status_code == 202 and "Computing…" in computing.text
        assert re.search(r'<meta http-equiv="refresh" content="\d+">', computing.text)

        jobs = app.state.gallery.duplicates
        assert jobs.get(library.generation(), "cls", None).done.wait(60)
        for _ in range(2):
            done = client.get("/duplicates")
            assert done.status_code == 200 and "No duplicates found." in done.text
            assert 'http-equiv="refresh"' not in done.text
        assert calls == [("cls", None)]

        release.clear()  # the next computation waits for the test, so the GET cannot race it
        library.store.bump_generation()  # the vectors changed: computed again
        assert client.get("/duplicates").status_code == 202
        release.set()
        assert jobs.get(library.generation(), "cls", None).done.wait(60)
        assert client.get("/duplicates").status_code == 200 and len(calls) == 2


# --- 6. bounded statements per page ---------------------------------------------------------------
def test_home_and_paging_read_no_more_than_a_page(library, monkeypatch):
    statements: list[tuple[str, tuple]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append((" ".join(statement.split()), tuple(parameters)))

    event.listen(library.store.engine, "before_cursor_execute", record)
    monkeypatch.setattr(web_app, "PAGE_SIZE", 4)
    try:
        with TestClient(create_app(library)) as client:
            url, per_page = "/", []
            while url:
                statements.clear()
                page = client.get(url)
                assert page.status_code == 200 and tile_ids(page.text)
                for statement, parameters in statements:
                    # SQLAlchemy writes "LIMIT ? OFFSET ?" for a limit alone: the offset is 0.
                    if "OFFSET ?" in statement:
                        assert parameters[-1] == 0, (statement, parameters)
                    table = re.search(r"\bFROM (\w+)", statement)
                    if table and table.group(1) == "images" and "count(" not in statement:
                        assert "LIMIT" in statement.upper(), statement
                per_page.append(len(statements))
                url = link(page.text, "next")
    finally:
        event.remove(library.store.engine, "before_cursor_execute", record)
    assert len(per_page) == 4  # 13 images, 4 a page
    # A page's cost does not grow with its position (no OFFSET); the first page also fills
    # the tag filter's cache, which later pages of the same generation reuse.
    first, *later = per_page
    assert max(per_page) <= 10 and len(set(later)) == 1 and later[0] <= first, per_page


# --- names that are not UTF-8, spaces, newlines -------------------------------------------------
def test_odd_names_render_and_are_served(tmp_path, tiny_model):
    names = {f"{ODD_FOLDER}/{NON_UTF8}": (320, 240), "with space.jpg": (320, 240),
             "new\nline.jpg": (320, 240), "quote\"and'<b>.jpg": (320, 240)}  # fmt: skip
    folder = small_library(tmp_path, tiny_model, names)
    shown = "caf\ufffd.jpg"
    with Library.open(folder) as library, TestClient(create_app(library)) as client:
        ids = by_name(library)
        home = client.get("/")
        assert home.status_code == 200 and len(tile_ids(home.text)) == 4
        for name in (shown, "with space.jpg", "new\nline.jpg", "quote&#34;and&#39;&lt;b&gt;.jpg"):
            assert f'<span class="caption">{name}</span>' in home.text, name
        odd_folder = str(tmp_path / "photos" / ODD_FOLDER)
        key = web_app.encode_key(odd_folder)
        assert f'<option value="{key}">' in home.text and "d\ufffdapos" in home.text
        assert tile_ids(client.get("/", params={"folder": key}).text) == [ids[NON_UTF8]]
        for name, id_ in ids.items():
            page = client.get(f"/image/{id_}")
            assert page.status_code == 200, name
            served = client.get(f"/file/{id_}")
            photo = tmp_path / "photos" / (f"{ODD_FOLDER}/{name}" if name == NON_UTF8 else name)
            assert served.status_code == 200 and served.content == photo.read_bytes(), name
            assert "\n" not in served.headers["content-disposition"]
            assert client.get(f"/thumb/{id_}").status_code == 200
        assert (
            "caf%EF%BF%BD.jpg"
            in client.get(f"/file/{ids[NON_UTF8]}").headers["content-disposition"]
        )
