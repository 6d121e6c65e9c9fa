"""The fast CPU runtime: the ViT exported to ONNX and quantized to dynamic int8 (ONNX Runtime).

On a 2-core CPU it runs the ViT-B/16 forward about twice as fast as torch fp32 (docs/benchmarks.md)
with CLS cosine >= 0.99 against fp32. Its vectors are not fp32 vectors, so they carry their own
spec runtime and a library never mixes the two. The export + quantization takes a while, so the
result is cached in a folder (the library's `models/`), keyed by the spec, and built only once.
onnx and onnxruntime are the optional `fast` extra; they are imported only here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vitdex.embedder.errors import ModelLoadError

log = logging.getLogger(__name__)

RUNTIME = "onnx-int8"
OPSET = 17


def int8_session(
    net: Any,
    cache_dir: Path,
    key: str,
    *,
    image_size: tuple[int, int],
    with_pooler: bool,
    threads: int,
) -> Int8Session:
    """The cached quantized model for `key`, exported from `net` first when it is missing."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            "--runtime int8 needs onnx and onnxruntime: pip install 'vitdex[fast]'"
        ) from exc
    path = Path(cache_dir) / f"{key}.onnx"
    if not path.is_file():
        log.info("exporting and quantizing the model to %s (once per spec)", path)
        _export_int8(net, path, image_size=image_size, with_pooler=with_pooler)
    return Int8Session(path, threads=threads, with_pooler=with_pooler)


class Int8Session:
    """An ONNX Runtime session over the quantized ViT: pixels in, hidden states (and pooler) out."""

    def __init__(self, path: Path, *, threads: int, with_pooler: bool) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.path = path
        self.with_pooler = with_pooler
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # a damaged cache file: say which, so it can be deleted
            raise ModelLoadError(f"cannot load the int8 model {path} ({exc}); delete it") from exc

    def __call__(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(last_hidden_state, pooler_output or None) for a (n, 3, H, W) float32 batch."""
        outputs = self.session.run(None, {"pixel_values": pixel_values})
        return outputs[0], (outputs[1] if self.with_pooler else None)


def _plain_outputs(net: Any, with_pooler: bool) -> Any:
    """ViTModel wrapped so the exported graph has plain tensor outputs."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.net(pixel_values=pixel_values)
            if with_pooler:
                return out.last_hidden_state, out.pooler_output
            return (out.last_hidden_state,)

    return Wrapped().eval()


def _export_int8(net: Any, path: Path, *, image_size: tuple[int, int], with_pooler: bool) -> None:
    """Export fp32 ONNX (TorchScript exporter: needs no onnxscript), quantize, move into place."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path.parent.mkdir(parents=True, exist_ok=True)
    names = ["last_hidden_state", "pooler_output"] if with_pooler else ["last_hidden_state"]
    height, width = image_size
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        int8 = Path(tmp) / "int8.onnx"
        with warnings.catch_warnings(), _quiet_root_logger():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _plain_outputs(net.float().cpu(), with_pooler),
                (torch.zeros(1, 3, height, width),),
                str(fp32),
                dynamo=False,
                opset_version=OPSET,
                input_names=["pixel_values"],
                output_names=names,
                dynamic_axes={name: {0: "batch"} for name in ["pixel_values", *names]},
            )
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
        os.replace(int8, path)  # atomic: a crash leaves no half-written model behind


@contextlib.contextmanager
def _quiet_root_logger():
    """quantize_dynamic logs a pre-processing hint on the root logger; vitdex logs its own."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
