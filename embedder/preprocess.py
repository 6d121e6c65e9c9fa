"""Fast preprocessing read from the checkpoint's image-processor config.

It does what transformers' PIL backend does (PIL resize with the same filter, float64 rescale
then float32 normalize), minus its per-call validation and copies, so the pixel values are
bit-for-bit the processor's. Configs it does not understand fall back to the processor itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

_RESAMPLE_NAMES = {
    Image.Resampling.NEAREST: "nearest",
    Image.Resampling.BOX: "box",
    Image.Resampling.BILINEAR: "bilinear",
    Image.Resampling.HAMMING: "hamming",
    Image.Resampling.BICUBIC: "bicubic",
    Image.Resampling.LANCZOS: "lanczos",
}


@dataclass(frozen=True)
class Preprocessor:
    """Resize + rescale + normalize parameters, and the processor to fall back on."""

    height: int
    width: int
    resample: int
    do_resize: bool
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    mean: np.ndarray
    std: np.ndarray
    fallback: Any = None  # the transformers processor, used when the config is not plain resize

    @classmethod
    def from_processor(cls, processor: Any) -> Preprocessor:
        """Read the processor's settings; keep the processor if the fast path can't match it."""
        size = processor.size
        if isinstance(size, dict):
            height, width = size.get("height"), size.get("width")
        else:
            height, width = getattr(size, "height", None), getattr(size, "width", None)
        plain = (
            height is not None
            and width is not None
            and not getattr(processor, "do_center_crop", False)
            and not getattr(processor, "do_pad", False)
            and getattr(processor, "backend", "pil") == "pil"
        )
        if not plain:
            log.info("%s is not a plain resize; using it directly", type(processor).__name__)
            shortest = getattr(size, "shortest_edge", None) or 224
            height = height or shortest
            width = width or shortest
        resample = processor.resample
        resample = int(resample) if resample is not None else int(Image.Resampling.BILINEAR)
        channels = 3
        mean = np.broadcast_to(np.asarray(processor.image_mean, np.float32), (channels,)).copy()
        std = np.broadcast_to(np.asarray(processor.image_std, np.float32), (channels,)).copy()
        return cls(
            height=int(height),
            width=int(width),
            resample=resample,
            do_resize=bool(processor.do_resize),
            do_rescale=bool(processor.do_rescale),
            rescale_factor=float(processor.rescale_factor),
            do_normalize=bool(processor.do_normalize),
            mean=mean,
            std=std,
            fallback=None if plain else processor,
        )

    @property
    def target_size(self) -> int:
        """Longest side the model input needs; drives JPEG draft decoding."""
        return max(self.height, self.width)

    def describe(self, *, draft: bool) -> dict[str, Any]:
        """The preprocessing part of the EmbeddingSpec."""
        described = {
            "size": {"height": self.height, "width": self.width},
            "resample": _RESAMPLE_NAMES.get(self.resample, str(self.resample)),
            "do_resize": self.do_resize,
            "rescale_factor": self.rescale_factor if self.do_rescale else None,
            "mean": [float(v) for v in self.mean] if self.do_normalize else None,
            "std": [float(v) for v in self.std] if self.do_normalize else None,
            "draft": bool(draft),
        }
        if self.fallback is not None:  # the processor decides: record all of its settings
            config = self.fallback.to_dict()
            described["processor"] = {
                k: v for k, v in sorted(config.items()) if k.startswith(("do_", "size", "crop"))
            }
        return described

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 array (3, H, W), ready to stack into pixel_values."""
        if self.fallback is not None:
            out = self.fallback(image, do_convert_rgb=True, return_tensors="np")
            return np.asarray(out["pixel_values"][0], dtype=np.float32)
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode}")
        if self.do_resize:
            image = image.resize((self.width, self.height), resample=self.resample)
        array = np.asarray(image)
        if self.do_rescale:
            pixels = (array.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            pixels = array.astype(np.float32)
        if self.do_normalize:
            pixels = (pixels - self.mean) / self.std
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))
