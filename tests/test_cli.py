"""The command line as a whole: entry points, lazy imports, configuration, offline errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.test_ingest import run
from vitdex.library import config


def test_help_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from vitdex.cli.main import main\n"
        "for args in ([], ['ingest'], ['search'], ['status'], ['index', 'rebuild']):\n"
        "    assert CliRunner().invoke(main, [*args, '--help']).exit_code == 0\n"
        "heavy = {'torch', 'transformers', 'faiss'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "vitdex.cli", "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "ingest" in out and "search" in out


def test_usage_errors_exit_2(tmp_path):
    assert "No such command" in run("frobnicate", expect=2)
    run("ingest", expect=2)
    run("search", "x.jpg", "--feature", "nope", expect=2)


def test_library_location_precedence(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "default_library_path", lambda: tmp_path / "platform")
    monkeypatch.delenv(config.LIBRARY_ENV, raising=False)
    assert config.resolve_library_path(None) == tmp_path / "platform"
    monkeypatch.setenv(config.LIBRARY_ENV, str(tmp_path / "env"))
    assert config.resolve_library_path(None) == tmp_path / "env"
    assert config.resolve_library_path(tmp_path / "opt") == tmp_path / "opt"


def test_env_library_is_used_by_commands(tiny_model, photo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(config.LIBRARY_ENV, str(tmp_path / "from-env"))
    run("ingest", photo_dir, "--model", tiny_model)
    assert (tmp_path / "from-env" / "vitdex.sqlite").exists()
    assert run("status", "--json")["images"] == 4


def test_offline_model_error_says_how_to_use_a_local_folder(photo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    out = run(
        "ingest",
        photo_dir,
        "--library",
        tmp_path / "lib",
        "--model",
        "some-org/not-cached-model",
        expect=1,
    )
    assert "some-org/not-cached-model" in out and "--model" in out and "local" in out
    assert not (Path(tmp_path / "lib") / "index").exists()
