"""Embedder: load a ViT checkpoint (hub id or local folder) and turn images into vectors.

torch and transformers are imported inside functions: `import vitdex.embedder` stays cheap, so
CLI commands that never embed (status, search by id) start fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from vitdex.embedder.decode import decode_image
from vitdex.embedder.errors import DeviceError, FeatureError, ModelLoadError
from vitdex.embedder.features import (
    BASE_FEATURES,
    Feature,
    canonical_features,
    parse_feature,
    select_features,
)
from vitdex.embedder.head import TOP_LABELS, ClassifierHead, Label, load_head
from vitdex.embedder.pipeline import EmbeddedBatch, EmbedResult, cpu_split, stream_embeddings
from vitdex.embedder.preprocess import Preprocessor
from vitdex.embedder.spec import EmbeddingSpec
from vitdex.embedder.weights import weight_files, weights_digest

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MODEL = "google/vit-base-patch16-224"
_CHUNK = 64  # images per forward in embed_images, to bound activation memory
GPU_BATCH = 64  # images per forward on a GPU: small batches leave it idle between launches
CPU_BATCH = 16
RUNTIMES = {"fp32": "torch-fp32", "int8": "onnx-int8"}
"""--runtime option -> EmbeddingSpec.runtime."""


def runtime_option(spec_runtime: str) -> str:
    """The --runtime option that makes vectors of `spec_runtime` (the inverse of RUNTIMES)."""
    return {value: key for key, value in RUNTIMES.items()}.get(spec_runtime, spec_runtime)


class Embedder:
    """A loaded checkpoint plus its preprocessing; produces L2-normalised float32 vectors."""

    def __init__(
        self,
        model: Any,
        preprocessor: Preprocessor,
        spec: EmbeddingSpec,
        *,
        device: str,
        has_pooler: bool,
        draft: bool,
        workers: int,
        session: Any = None,
        head: ClassifierHead | None = None,
        layers: int = 0,
    ) -> None:
        self.model = model
        self.head = head  # the checkpoint's classifier: labels from the features' forward
        self.session = session  # the int8 runtime's Int8Session; None runs the torch model
        self.preprocessor = preprocessor
        self.spec = spec
        self.device = device
        self.has_pooler = has_pooler
        self.draft = draft
        self.default_workers = workers
        self.default_batch_size = CPU_BATCH if device == "cpu" else GPU_BATCH
        self._features = tuple(parse_feature(name, layers) for name in spec.features)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "auto",
        revision: str | None = None,
        draft: bool = True,
        threads: int | None = None,
        runtime: str = "fp32",
        cache_dir: str | Path | None = None,
        features: Iterable[str] | None = None,
    ) -> Embedder:
        """Load `model` (hub id or local folder) through the same transformers code path.

        `revision` pins a hub commit (a library loads its own, offline from the cache too);
        without it the commit `main` points to is resolved once and recorded in the spec. A
        folder has no revisions: `revision` is ignored and the spec records "local".
        Raises ModelLoadError with a how-to when the hub is unreachable and the model is not
        cached, DeviceError when `device` is not usable here. `draft` enables reduced-scale
        JPEG decoding (see decode_image); it is part of the spec. `threads` overrides the torch
        CPU thread count. `runtime` "int8" runs the model through ONNX Runtime, quantized (CPU
        only, see quantized.py), cached in `cache_dir` (default: the user cache folder).
        `cache_dir` also remembers weight digests, so a local model is hashed once.
        `features` (names, see vitdex.embedder.features) default to cls and mean, and pooler
        when the checkpoint has trained pooler weights; FeatureError if one cannot be made.
        """
        import torch

        if runtime not in RUNTIMES:
            raise ModelLoadError(f"unknown runtime {runtime!r}; choose {' or '.join(RUNTIMES)}")
        if runtime == "int8" and device not in ("auto", "cpu"):
            raise ModelLoadError("--runtime int8 runs on the CPU; use --runtime fp32 on a GPU")
        source, is_local = _resolve_source(model)
        resolved_device = "cpu" if runtime == "int8" else _pick_device(device)
        cache = Path(cache_dir) if cache_dir else None
        cache_only = not is_local and not _hub_reachable()
        if is_local:
            folder, commit = Path(source), "local"
            if missing := _missing_model_files(folder):
                raise ModelLoadError(
                    f"model folder {folder} is not a model: missing {', '.join(missing)}"
                )
        else:  # resolve the commit once, so model and processor come from that one commit
            folder = _hub_snapshot(source, revision, cache_only)
            commit = folder.name if folder.parent.name == "snapshots" else revision or "unknown"
        net, processor = _load_checkpoint(
            source, None if is_local else commit, is_local=is_local, cache_only=cache_only
        )
        net.eval().to(resolved_device)

        has_pooler = getattr(net, "pooler", None) is not None and not net._vitdex_pooler_missing
        if not has_pooler:
            net.pooler = None  # random weights: never computed, never offered
        layers = int(net.config.num_hidden_layers)
        features = _choose_features(features, source, layers, has_pooler, runtime)
        head = load_head(folder, net.config)

        preprocessor = Preprocessor.from_processor(processor)
        spec = EmbeddingSpec(
            model_id=source,
            revision=commit,
            preprocessing=preprocessor.describe(draft=draft),
            features=features,
            dim=int(net.config.hidden_size),
            runtime=RUNTIMES[runtime],
            weights=_weights(source, folder, cache),
            architecture=_architecture(net.config),
        )

        torch_threads, workers = cpu_split()
        session = None
        if runtime == "int8":
            from vitdex.embedder.quantized import int8_session

            session = int8_session(
                net,
                cache or _user_cache() / "models",
                spec.key,
                image_size=(preprocessor.height, preprocessor.width),
                with_pooler=has_pooler,
                threads=threads or torch_threads,
            )
            net = None  # the session holds the weights now
        elif resolved_device == "cpu":
            torch.set_num_threads(threads or torch_threads)
        else:  # decoding 12 MP JPEGs is what limits a GPU: every core decodes
            workers = os.cpu_count() or 1
        log.info("loaded %s on %s, features %s, %s labels", source, resolved_device, features,
                 len(head.names) if head else "no")  # fmt: skip
        return cls(
            net,
            preprocessor,
            spec,
            device=resolved_device,
            has_pooler=has_pooler,
            draft=draft,
            workers=workers,
            session=session,
            head=head,
            layers=layers,
        )

    # ------------------------------------------------------------------ features
    @property
    def features(self) -> tuple[str, ...]:
        """Features this embedder makes (the spec's): by default cls, mean, and pooler only
        when trained."""
        return self.spec.features

    @property
    def dim(self) -> int:
        """The model's width: the length of cls, mean and pooler (see `spec.dim_of`)."""
        return self.spec.dim

    def check_feature(self, name: str) -> str:
        """Return `name` if this checkpoint offers it, else raise FeatureError saying why."""
        if name in self.features:
            return name
        if name == "pooler":
            raise FeatureError(
                f"checkpoint {self.spec.model_id} has no trained pooler weights (it is a "
                "classification checkpoint, its pooler would be random); use cls or mean"
            )
        raise FeatureError(f"unknown feature {name!r}; choose one of {', '.join(self.features)}")

    # ------------------------------------------------------------------ embedding
    def embed_pixels(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """Forward a (n, 3, H, W) float32 batch; returns feature -> (n, dim) normalised float32."""
        return self.embed_batch(pixel_values).vectors

    def embed_batch(self, pixel_values: np.ndarray, *, top: int = TOP_LABELS) -> EmbeddedBatch:
        """One forward of a (n, 3, H, W) float32 batch: its feature vectors, and the head's `top`
        labels of each image when the checkpoint has a classification head."""
        if self.session is not None:
            hidden, pooler = self.session(np.ascontiguousarray(pixel_values, dtype=np.float32))
            return EmbeddedBatch(self._int8_features(hidden, pooler), self._labels(hidden, top))
        import torch

        pixels = torch.from_numpy(np.ascontiguousarray(pixel_values, dtype=np.float32))
        if self.device.startswith("cuda"):  # pinned: a DMA copy, no staging through pageable memory
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        else:
            pixels = pixels.to(self.device)
        autocast = (
            torch.autocast("cuda", dtype=torch.float16)
            if self.device.startswith("cuda")
            else contextlib.nullcontext()
        )
        hidden_states = any(f.needs_hidden_states for f in self._features)
        with torch.inference_mode(), autocast:
            out = self.model(pixel_values=pixels, output_hidden_states=hidden_states)
            feats = select_features(self._features, out, self.model.layernorm)
            vectors = {
                name: torch.nn.functional.normalize(value, dim=-1).cpu().numpy().astype(np.float32)
                for name, value in feats.items()
            }
            return EmbeddedBatch(vectors, self._labels(out.last_hidden_state, top))

    def _labels(self, hidden: Any, top: int) -> list[tuple[Label, ...]] | None:
        """The head over the final layer-normed CLS tokens (what ViTForImageClassification
        reads); None without a head."""
        if self.head is None:
            return None
        cls_tokens = hidden[:, 0]
        if not isinstance(cls_tokens, np.ndarray):  # a torch tensor, perhaps on the GPU
            cls_tokens = cls_tokens.float().cpu().numpy()
        return self.head.top(cls_tokens, top)

    def _int8_features(
        self, hidden: np.ndarray, pooler: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        feats = {"cls": hidden[:, 0], "mean": hidden[:, 1:].mean(axis=1), "pooler": pooler}
        return {name: _normalize(feats[name]) for name in self.features}

    def embed_images(self, images: list[Image.Image]) -> dict[str, np.ndarray]:
        """Embed RGB PIL images (already decoded); feature -> (n, dim)."""
        if not images:
            return {
                name: np.zeros((0, self.spec.dim_of(name)), np.float32) for name in self.features
            }
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, len(images), _CHUNK):
            chunk = images[start : start + _CHUNK]
            pixels = np.stack([self.preprocessor(_as_rgb(image)) for image in chunk])
            parts.append(self.embed_pixels(pixels))
        return {name: np.concatenate([p[name] for p in parts]) for name in self.features}

    def embed_path(self, path: str | Path) -> dict[str, np.ndarray]:
        """Embed one image file (a query); feature -> (dim,). Raises DecodeError."""
        image, _info = decode_image(path, self.preprocessor.target_size, draft=self.draft)
        vectors = self.embed_pixels(self.preprocessor(image)[None])
        return {name: array[0] for name, array in vectors.items()}

    def embed_files(
        self,
        items: Iterable[T],
        path_of: Callable[[T], Path] | None = None,
        *,
        batch_size: int | None = None,
        workers: int | None = None,
        top: int = TOP_LABELS,
    ) -> Iterator[EmbedResult[T]]:
        """Stream EmbedResults in input order; bad files yield an error result, never raise.

        `items` is consumed lazily (at most about 2 batches in flight); decoding runs in
        `workers` threads while the model embeds the previous batch. With a classification
        head, each result also carries the image's `top` labels.
        """
        return stream_embeddings(
            self,
            items,
            path_of,
            batch_size=batch_size or self.default_batch_size,
            workers=workers or self.default_workers,
            top=top,
        )

    def __repr__(self) -> str:
        return f"Embedder({self.spec.model_id!r}, device={self.device!r}, features={self.features})"


# ---------------------------------------------------------------------- helpers
def _choose_features(
    names: Iterable[str] | None, source: str, layers: int, has_pooler: bool, runtime: str
) -> tuple[str, ...]:
    """The spec's features: the default set, or `names` checked against this checkpoint."""
    if names is None:
        return (*BASE_FEATURES, "pooler") if has_pooler else BASE_FEATURES
    chosen: list[Feature] = [parse_feature(name, layers) for name in names]
    if not chosen:
        raise FeatureError("no features chosen; choose at least one, e.g. cls")
    for feature in chosen:
        if feature.token == "pooler" and not has_pooler:
            raise FeatureError(
                f"checkpoint {source} has no trained pooler weights (it is a classification"
                " checkpoint, its pooler would be random); leave pooler out"
            )
        if feature.needs_hidden_states and runtime == "int8":
            raise FeatureError(
                f"feature {feature.name}: --runtime int8 makes only cls, mean and pooler"
                " (the quantized model returns the last block only); use --runtime fp32"
            )
    return canonical_features(f.name for f in chosen)


def _normalize(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise rows as torch.nn.functional.normalize does (eps 1e-12)."""
    vectors = vectors.astype(np.float32, copy=False)
    norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return (vectors / norms).astype(np.float32)


def _user_cache() -> Path:
    from platformdirs import user_cache_path

    return user_cache_path("vitdex", appauthor=False)


def _as_rgb(image: Image.Image) -> Image.Image:
    from vitdex.embedder.decode import to_rgb

    return to_rgb(image)


def _pick_device(device: str) -> str:
    """`device` if this machine has it ("auto": cuda, then mps, then cpu); else DeviceError."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(
            f"--device {device}: unknown device; use auto, cpu, cuda or mps"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"torch {torch.__version__} is a CPU build"
                if torch.version.cuda is None
                else f"no GPU is visible to torch {torch.__version__}"
            )
            raise DeviceError(
                f"--device {device}: CUDA is not available on this machine ({why}); use --device"
                " cpu or auto"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise DeviceError(
                f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to"
                f" cuda:{count - 1}"
            )
    elif parsed.type == "mps" and not has_mps:
        raise DeviceError(
            f"--device {device}: MPS (the Apple GPU) is not available on this machine; use"
            " --device cpu or auto"
        )
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"--device {device}: not supported by vitdex; use auto, cpu, cuda or mps")
    return device


def _resolve_source(model: str) -> tuple[str, bool]:
    """A local folder becomes its absolute path; anything else is treated as a hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve()), True
    looks_like_path = (
        model.startswith(("/", "./", "../", "~"))
        or model.count("/") > 1
        or (os.sep != "/" and os.sep in model)
    )
    if looks_like_path or path.exists():
        raise ModelLoadError(
            f"model folder {model} does not exist (or is not a folder); pass --model with a folder "
            "containing config.json, model.safetensors and preprocessor_config.json"
        )
    return model, False


def _missing_model_files(folder: Path) -> list[str]:
    """What a model folder lacks, in words: config.json, weights, preprocessor_config.json."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not weight_files(folder):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if not (folder / "preprocessor_config.json").is_file():
        missing.append("preprocessor_config.json")
    return missing


def _offline_help(model: str) -> str:
    return (
        "not in the local Hugging Face cache, and the hub cannot be reached (offline,"
        " HF_HUB_OFFLINE set, or no network). Use a local folder instead: on a connected machine"
        f" run `hf download {model} --local-dir DIR` (huggingface_hub's CLI), copy DIR here, then"
        " pass `--model /path/to/DIR` (the folder must contain config.json, model.safetensors"
        " and preprocessor_config.json)."
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub accepts a connection within `timeout` s; False in HF offline mode.

    huggingface_hub retries an unreachable hub for about 30 s, logging every try; one quick
    check lets an offline machine load from its cache, or get the offline how-to, at once.
    Behind a proxy the hub's host is not dialled directly: assume it is reachable.
    """
    import socket
    import threading
    import urllib.request
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    proxies = urllib.request.getproxies()
    if proxies.get("https") or proxies.get("all"):
        return True
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    connected = threading.Event()

    def connect() -> None:  # in a thread: a stuck DNS lookup has no timeout of its own
        try:
            socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
            connected.set()
        except OSError:
            pass

    threading.Thread(target=connect, name="vitdex-hub-check", daemon=True).start()
    return connected.wait(timeout)


def _is_offline_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = type(current).__name__
        text = str(current).lower()
        if name in {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError",
                    "ConnectTimeout", "ConnectError"}:  # fmt: skip
            return True
        if "couldn't connect" in text or "outgoing traffic has been disabled" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars; vitdex reports its own way."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _hub_error(source: str, exc: Exception) -> ModelLoadError:
    """One line for a hub id that failed: it is not a folder here, and why the hub said no."""
    if _is_offline_error(exc):
        reason = _offline_help(source)
    elif _in_chain(exc, "GatedRepoError"):
        reason = "the model is gated: accept its terms on the hub, then log in (`hf auth login`)"
    elif _in_chain(exc, "RepositoryNotFoundError"):
        reason = "no such model on the hub (or it is private)"
    elif _in_chain(exc, "RevisionNotFoundError"):
        reason = "the hub has no such revision of it"
    else:
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
    return ModelLoadError(
        f"model {source}: no folder named {source} in {Path.cwd()}, and tried as a Hugging Face"
        f" hub id: {reason}"
    )


def _in_chain(exc: BaseException, name: str) -> bool:
    """Whether `exc` or an exception it was raised from is a `name` (transformers wraps them)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(cls.__name__ == name for cls in type(current).__mro__):
            return True
        current = current.__cause__ or current.__context__
    return False


def _load_checkpoint(
    source: str, revision: str | None, *, is_local: bool, cache_only: bool
) -> tuple[Any, Any]:
    import torch
    from transformers import AutoImageProcessor, ViTModel

    try:
        with _quiet_transformers():
            net, loading = ViTModel.from_pretrained(
                source,
                revision=revision,
                output_loading_info=True,
                dtype=torch.float32,
                local_files_only=cache_only,
            )
            # The PIL backend on every machine: torchvision's resize differs slightly, and a
            # library must get the same vectors (and spec) wherever it is opened.
            processor = AutoImageProcessor.from_pretrained(
                source, revision=revision, backend="pil", local_files_only=cache_only
            )
    except ModelLoadError:
        raise
    except Exception as exc:
        if is_local:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"cannot load model {source}: {reason}") from exc
        raise _hub_error(source, exc) from exc
    missing = [key for key in loading.get("missing_keys", ()) if "pooler" in key]
    net._vitdex_pooler_missing = bool(missing)
    non_pooler_missing = [k for k in loading.get("missing_keys", ()) if "pooler" not in k]
    if non_pooler_missing:
        raise ModelLoadError(
            f"checkpoint {source} is not a ViT encoder: missing weights {non_pooler_missing[:5]}"
        )
    return net, processor


def _hub_snapshot(source: str, revision: str | None, cache_only: bool) -> Path:
    """The hub cache folder of `revision` (default: main's commit), fetching config.json."""
    from transformers.utils import cached_file

    try:
        with _quiet_transformers():
            config = cached_file(
                source, "config.json", revision=revision, local_files_only=cache_only
            )
            return Path(config).parent
    except Exception as exc:
        raise _hub_error(source, exc) from exc


def _weights(source: str, folder: Path, cache_dir: Path | None) -> str:
    files = weight_files(folder)
    if not files:
        raise ModelLoadError(f"cannot find the weights of {source} in {folder}")
    try:
        return weights_digest(files, cache_dir)
    except OSError as exc:
        raise ModelLoadError(f"cannot read the weights of {source}: {exc}") from exc


_ARCHITECTURE_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "layer_norm_eps", "image_size", "patch_size", "num_channels", "qkv_bias",
    "pooler_output_size", "pooler_act",
)  # fmt: skip
"""Config entries that change the encoder's forward pass. An allowlist: keys transformers adds
in a new version, or a re-save's bookkeeping, must not change a library's key."""


def _architecture(config: Any) -> dict[str, Any]:
    values = config.to_dict()
    return {key: values[key] for key in _ARCHITECTURE_KEYS if key in values}
