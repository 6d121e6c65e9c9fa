"""Image decoding and ViT embeddings for vitdex.

Importing this package does not import torch or transformers; they load with the first
`Embedder.load`.
"""

from vitdex.embedder.decode import (
    IMAGE_SUFFIXES,
    ImageInfo,
    decode_image,
    open_image_file,
    sniff_image_format,
)
from vitdex.embedder.errors import DecodeError, DeviceError, FeatureError, ModelLoadError
from vitdex.embedder.model import DEFAULT_MODEL, RUNTIMES, Embedder, runtime_option
from vitdex.embedder.pipeline import EmbedResult
from vitdex.embedder.spec import EmbeddingSpec

__all__ = [
    "DEFAULT_MODEL",
    "IMAGE_SUFFIXES",
    "RUNTIMES",
    "DecodeError",
    "DeviceError",
    "EmbedResult",
    "Embedder",
    "EmbeddingSpec",
    "FeatureError",
    "ImageInfo",
    "ModelLoadError",
    "decode_image",
    "open_image_file",
    "runtime_option",
    "sniff_image_format",
]
