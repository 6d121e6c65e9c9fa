"""What a user meets when the model cannot load: one clear line, at once, naming the way out."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vitdex.embedder import Embedder, ModelLoadError

REPO = Path(__file__).resolve().parents[1]

_LOAD = """
import sys
from vitdex.embedder import Embedder, ModelLoadError
try:
    Embedder.load(sys.argv[1], device="cpu")
except ModelLoadError as exc:
    print("MLE:" + str(exc))
"""


def _closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once, no network involved."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load_unreachable_hub(model: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",  # not told it is offline: it must find out by itself
        "TRANSFORMERS_OFFLINE": "0",
        "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
        "HF_HOME": str(tmp_path / "hf-empty"),
    }
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy, None)
    result = subprocess.run(
        [sys.executable, "-c", _LOAD, model], capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def test_unreachable_hub_fails_at_once_with_the_message_only(tmp_path):
    result = _load_unreachable_hub("some-org/not-cached-model", tmp_path)
    message = result.stdout.strip()
    assert message.startswith("MLE:"), result.stdout + result.stderr
    assert "not in the local Hugging Face cache" in message
    assert "`hf download some-org/not-cached-model --local-dir DIR`" in message
    assert "huggingface-cli" not in message
    # no retries of the unreachable hub, and nothing else printed
    assert "Retry" not in result.stderr and "thrown while requesting" not in result.stderr
    assert result.stderr.strip() == ""


def test_mistyped_folder_says_no_such_folder_and_hub_id_tried(tmp_path):
    result = _load_unreachable_hub("vit-typo", tmp_path)
    message = result.stdout.strip()
    assert message.startswith("MLE:"), result.stdout + result.stderr
    assert f"no folder named vit-typo in {tmp_path}" in message
    assert "tried as a Hugging Face hub id" in message
    assert "Retry" not in result.stderr


def test_hub_id_not_on_the_hub(monkeypatch, tmp_path):
    import httpx
    from huggingface_hub.errors import RepositoryNotFoundError

    url = "https://huggingface.co/vit-typo/resolve/main/config.json"
    response = httpx.Response(404, request=httpx.Request("HEAD", url))

    def not_found(*args, **kwargs):  # what huggingface_hub raises, wrapped as transformers does
        try:
            raise RepositoryNotFoundError("404 Repository Not Found", response=response)
        except RepositoryNotFoundError as exc:
            raise OSError("vit-typo is not a local folder and is not a valid model id") from exc

    monkeypatch.setattr("transformers.utils.cached_file", not_found)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError) as caught:
        Embedder.load("vit-typo", device="cpu")
    message = str(caught.value)
    assert message == (
        f"model vit-typo: no folder named vit-typo in {tmp_path}, and tried as a Hugging Face"
        " hub id: no such model on the hub (or it is private)"
    )
