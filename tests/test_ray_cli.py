"""ingest --engine ray without a cluster: option checks and a missing Ray, each one clear line."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from tests.photos import make_photo
from vitdex.cli.main import main


def run(*args, expect: int) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == expect, result.output
    return result.output


def test_ray_options_need_the_ray_engine(tmp_path):
    out = run("ingest", tmp_path, "--library", tmp_path / "lib", "--ray-address", "auto", expect=2)
    assert "--ray-address and --ray-actors need --engine ray" in out


def test_engine_ray_without_ray_installed_says_how_to_install(monkeypatch, tiny_model, tmp_path):
    make_photo(tmp_path / "photos" / "a.jpg", size=(64, 48), seed=0)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = run("ingest", tmp_path / "photos", "--library", tmp_path / "lib", "--model", tiny_model,
              "--engine", "ray", expect=1)  # fmt: skip
    (line,) = out.strip().splitlines()
    assert "--engine ray needs Ray Data" in line and "pip install 'vitdex[ray]'" in line


def test_an_unreachable_ray_address_is_one_line_not_a_long_wait(tiny_model, tmp_path):
    """Ray itself retries an address where nothing listens for minutes; vitdex checks first."""
    import socket

    pytest.importorskip("ray")
    make_photo(tmp_path / "photos" / "a.jpg", size=(64, 48), seed=0)
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        out = run("ingest", tmp_path / "photos", "--library", tmp_path / "lib", "--model",
                  tiny_model, "--engine", "ray", "--ray-address", address, expect=1)  # fmt: skip
        (line,) = out.strip().splitlines()
        assert f"cannot reach the Ray cluster at {address}" in line
    status = json.loads(run("status", "--library", tmp_path / "lib", "--json", expect=0))
    assert status["images"] == 0  # nothing half-done: the next ingest starts clean
