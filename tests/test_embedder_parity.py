"""Parity: vitdex vectors equal what transformers' own processor + ViTModel give.

The reference is what a careful user writes: Image.open, ImageOps.exif_transpose, then
AutoImageProcessor(do_convert_rgb=True) and ViTModel on the same checkpoint. vitdex decodes with
JPEG draft (reduced-scale DCT) on, so this also proves draft does not move the vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, features

from tests.photos import make_photo, photo_array
from vitdex.embedder import Embedder

MIN_COSINE = 0.999


def _write_parity_images(folder: Path, big_photo: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(photo_array((320, 240), 21))
    alpha = Image.linear_gradient("L").resize(rgb.size)
    out: dict[str, Path] = {"big_12mp.jpg": big_photo}

    def save(name: str, image: Image.Image, **kw) -> None:
        out[name] = folder / name
        image.save(out[name], **kw)

    out["small.jpg"] = make_photo(folder / "small.jpg", size=(320, 240), seed=20)
    out["portrait.jpg"] = make_photo(folder / "portrait.jpg", size=(600, 900), seed=22)
    save("rgba.png", Image.merge("RGBA", (*rgb.split(), alpha)))
    save("p_transparent.png", rgb.quantize(64), transparency=3)
    save("gray.png", rgb.convert("L"))
    save("gray.jpg", rgb.convert("L"), quality=90)
    save("bw.png", rgb.convert("1"))
    save("la.png", Image.merge("LA", (rgb.convert("L"), alpha)))
    save("cmyk.jpg", rgb.convert("CMYK"), quality=90)
    wide = (np.asarray(rgb.convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    save("i16.png", Image.fromarray(wide))
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(f"exif{orientation}.jpg", Image.fromarray(photo_array((640, 480), orientation)),
             exif=exif, quality=90)  # fmt: skip
    frames = [Image.fromarray(photo_array((160, 120), seed)) for seed in (30, 31, 32)]
    for name in ("anim.gif", "multi.tiff"):
        out[name] = folder / name
        frames[0].save(out[name], save_all=True, append_images=frames[1:])
    save("photo.webp", rgb, quality=90)
    save("photo.bmp", rgb)
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        save("photo.heic", rgb, format="HEIF", quality=90)
    except ImportError:
        pass
    if features.check("avif"):
        save("photo.avif", rgb, quality=90)
    return out


def _reference(model_dir: Path, paths: dict[str, Path]) -> dict[str, dict[str, np.ndarray]]:
    import torch
    from transformers import AutoImageProcessor, ViTModel

    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = ViTModel.from_pretrained(model_dir).eval()
    out = {}
    for name, path in paths.items():
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
        pixels = processor(image, do_convert_rgb=True, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            result = model(pixel_values=pixels)
        hidden = result.last_hidden_state[0]
        out[name] = {
            "cls": hidden[0].numpy(),
            "mean": hidden[1:].mean(0).numpy(),
            "pooler": result.pooler_output[0].numpy(),
            "pixel_values": pixels[0].numpy(),
        }
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def parity_images(tmp_path_factory, big_photo) -> dict[str, Path]:
    return _write_parity_images(tmp_path_factory.mktemp("parity"), big_photo)


@pytest.fixture(scope="module")
def reference(tiny_model, parity_images) -> dict[str, dict[str, np.ndarray]]:
    return _reference(tiny_model, parity_images)


def test_parity_with_transformers(tiny_embedder, parity_images, reference, record_property):
    assert {"photo.heic", "exif6.jpg", "i16.png", "cmyk.jpg"} <= set(parity_images)
    worst = (1.0, "")
    report = []
    for name, path in parity_images.items():
        ours = tiny_embedder.embed_path(path)
        for feature in ("cls", "mean"):
            vector = ours[feature]
            assert vector.dtype == np.float32
            assert abs(np.linalg.norm(vector) - 1.0) < 1e-5
            cosine = _cos(vector, reference[name][feature])
            report.append(f"{name}:{feature}={cosine:.6f}")
            worst = min(worst, (cosine, f"{name}:{feature}"))
            assert cosine >= MIN_COSINE, f"{name} {feature}: cosine {cosine:.6f}"
    record_property("min_parity_cosine", worst[0])
    print(f"\nPARITY min cosine {worst[0]:.6f} at {worst[1]} over {len(parity_images)} images")
    print("PARITY " + " ".join(report))


def test_fast_preprocessing_matches_processor_exactly(tiny_model, parity_images, reference):
    """Without draft, our pixel values are the processor's (max abs diff <= 1e-5)."""
    from vitdex.embedder import decode_image

    embedder = Embedder.load(str(tiny_model), device="cpu", draft=False)
    worst = 0.0
    for name, path in parity_images.items():
        image, _info = decode_image(path, embedder.preprocessor.target_size, draft=False)
        ours = embedder.preprocessor(image)
        diff = float(np.abs(ours - reference[name]["pixel_values"]).max())
        worst = max(worst, diff)
        assert diff <= 1e-5, f"{name}: max abs pixel diff {diff}"
    print(f"\nPIXELS max abs diff without draft {worst:.2e}")


def test_draft_pixels_close_at_vit_base_size(big_photo):
    """At the default model's 224 input, draft decoding moves pixel values only slightly."""
    from transformers import ViTImageProcessorPil

    from vitdex.embedder import decode_image
    from vitdex.embedder.preprocess import Preprocessor

    prep = Preprocessor.from_processor(ViTImageProcessorPil())  # google/vit-base-patch16-224's
    assert (prep.height, prep.width) == (224, 224)
    drafted, _ = decode_image(big_photo, target_size=224, draft=True)
    full, _ = decode_image(big_photo, target_size=224, draft=False)
    a, b = prep(drafted), prep(full)
    cosine = _cos(a.ravel(), b.ravel())
    mean_abs = float(np.abs(a - b).mean())
    print(f"\nDRAFT 224: pixel cosine {cosine:.6f}, mean abs diff {mean_abs:.4f}")
    assert cosine > 0.999 and mean_abs < 0.02


def test_exif_rotated_vector_equals_manually_rotated(tiny_model, parity_images):
    embedder = Embedder.load(str(tiny_model), device="cpu", draft=False)
    for name, method in (("exif6.jpg", Image.Transpose.ROTATE_270),
                         ("exif8.jpg", Image.Transpose.ROTATE_90),
                         ("exif3.jpg", Image.Transpose.ROTATE_180)):  # fmt: skip
        with Image.open(parity_images[name]) as raw:
            manual = raw.convert("RGB").transpose(method)
        ours = embedder.embed_path(parity_images[name])
        theirs = embedder.embed_images([manual])
        for feature in ("cls", "mean"):
            np.testing.assert_allclose(ours[feature], theirs[feature][0], atol=1e-6)


def test_pooler_parity_when_trained(tiny_model_with_pooler, parity_images):
    embedder = Embedder.load(str(tiny_model_with_pooler), device="cpu")
    subset = {k: parity_images[k] for k in ("small.jpg", "rgba.png", "exif6.jpg")}
    reference = _reference(tiny_model_with_pooler, subset)
    for name, path in subset.items():
        ours = embedder.embed_path(path)
        for feature in ("cls", "mean", "pooler"):
            assert _cos(ours[feature], reference[name][feature]) >= MIN_COSINE, (name, feature)
