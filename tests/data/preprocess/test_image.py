"""Image decoding, crops and normalisation against torchvision's own transforms."""
from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
from PIL import Image
from torchvision.io import encode_jpeg, encode_png

from multimodal.checkpoint import load_model, save_checkpoint
from multimodal.config_parser import from_dict, to_dict
from multimodal.data.preprocess.preprocess_config import CLIP_MEAN, CLIP_STD, WHITE, ImagePreprocessConfig
from multimodal.model import MultimodalModel
from multimodal.presets import tiny
from multimodal.data.preprocess.image_transforms import (
    collate_images,
    composite_alpha,
    decode_image,
    eval_crop,
    image_to_tensor,
    normalize_image,
    preprocess_image,
    random_resized_crop_box,
    train_crop,
)


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(3, height, width, generator=generator) * 255).to(torch.uint8)


def pil_bytes(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def test_png_round_trip_and_rgb_conversions():
    image = random_image(20, 30)
    assert torch.equal(decode_image(encode_png(image).numpy().tobytes()), image)
    gray = image[:1]
    decoded = decode_image(encode_png(gray).numpy().tobytes())
    assert decoded.shape == (3, 20, 30) and torch.equal(decoded, gray.expand(3, -1, -1))
    opaque = Image.fromarray(np.concatenate([image.permute(1, 2, 0).numpy(), np.full((20, 30, 1), 255, np.uint8)], 2))
    assert torch.equal(decode_image(pil_bytes(opaque, "PNG")), image)  # an opaque alpha channel changes nothing


def test_jpeg_and_webp_decode_close_to_the_original():
    smooth = torch.nn.functional.interpolate(random_image(4, 4).float()[None], size=(32, 32), mode="bilinear")[0]
    image = smooth.round().to(torch.uint8)
    jpeg = decode_image(encode_jpeg(image, quality=95).numpy().tobytes())
    webp = decode_image(pil_bytes(Image.fromarray(image.permute(1, 2, 0).numpy()), "WEBP"))
    for decoded in (jpeg, webp):
        assert decoded.shape == (3, 32, 32) and decoded.dtype == torch.uint8
        assert (decoded.float() - image.float()).abs().mean() < 4


@pytest.mark.parametrize("cut", [0, 10, 200])
def test_undecodable_bytes_raise_value_error(cut):
    data = encode_jpeg(random_image(64, 64)).numpy().tobytes()[:cut] if cut else b""
    with pytest.raises(ValueError, match="image"):
        decode_image(data)
    with pytest.raises(ValueError, match="cannot decode image"):
        decode_image(b"definitely not an image")


def test_eval_crop_matches_torchvision_resize_and_centre_crop():
    config = ImagePreprocessConfig(image_size=24)
    image = random_image(40, 64)
    reference = T.Compose([T.Resize(24, interpolation=T.InterpolationMode.BICUBIC, antialias=True), T.CenterCrop(24)])
    assert torch.equal(eval_crop(image, config), reference(image))
    already = random_image(24, 24)
    assert torch.equal(eval_crop(already, config), already)


def test_train_crop_is_seeded_and_follows_random_resized_crop():
    config = ImagePreprocessConfig(image_size=16, train_crop_scale=(0.5, 0.8))
    image = random_image(48, 40)
    first = train_crop(image, config, random.Random(3))
    assert first.shape == (3, 16, 16) and first.dtype == torch.uint8
    assert torch.equal(first, train_crop(image, config, random.Random(3)))
    assert not torch.equal(first, train_crop(image, config, random.Random(4)))
    rng = random.Random(0)
    for _ in range(200):
        top, left, height, width = random_resized_crop_box(48, 40, (0.5, 0.8), rng)
        assert 0 <= top and top + height <= 48 and 0 <= left and left + width <= 40
        assert 0.5 * 1920 * 0.9 <= height * width <= 0.8 * 1920 * 1.1
        assert 3 / 4 * 0.9 <= width / height <= 4 / 3 * 1.1


def test_train_crop_resizes_the_drawn_box_like_torchvision():
    config = ImagePreprocessConfig(image_size=20)
    image = random_image(50, 60)
    top, left, height, width = random_resized_crop_box(50, 60, config.train_crop_scale, random.Random(7))
    expected = T.functional.resized_crop(
        image, top, left, height, width, [20, 20], interpolation=T.InterpolationMode.BICUBIC, antialias=True
    )
    assert torch.equal(train_crop(image, config, random.Random(7)), expected)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_interleaved_resizes_equal_torchvision_bit_for_bit(interpolation):
    # uint8 resizes run channels-last (faster); across shapes that shrink, grow and
    # mix both, crops and centre crops must equal torchvision's planar results exactly.
    rng = random.Random(interpolation)
    mode = getattr(T.InterpolationMode, interpolation.upper())
    for height, width, size in [(256, 256, 224), (224, 224, 224), (213, 230, 224), (37, 300, 32), (400, 90, 97)]:
        config = ImagePreprocessConfig(image_size=size, interpolation=interpolation, train_crop_scale=(0.3, 1.0))
        image = random_image(height, width)
        reference = T.Compose([T.Resize(size, interpolation=mode, antialias=True), T.CenterCrop(size)])(image)
        assert torch.equal(eval_crop(image, config), reference)
        seed = rng.randrange(10**6)
        top, left, box_height, box_width = random_resized_crop_box(height, width, (0.3, 1.0), random.Random(seed))
        expected = T.functional.resized_crop(
            image, top, left, box_height, box_width, [size, size], interpolation=mode, antialias=True
        )
        assert torch.equal(train_crop(image, config, random.Random(seed)), expected)


def test_normalize_image_uses_clip_statistics_for_uint8_and_float():
    config = ImagePreprocessConfig()
    assert (config.mean, config.std) == (CLIP_MEAN, CLIP_STD)
    image = random_image(8, 8)
    reference = T.functional.normalize(image.float() / 255, list(CLIP_MEAN), list(CLIP_STD))
    torch.testing.assert_close(normalize_image(image, config), reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(normalize_image(image.float() / 255, config), reference, rtol=0, atol=1e-5)
    batch = torch.stack([image, image.flip(-1)])
    torch.testing.assert_close(normalize_image(batch, config)[1], normalize_image(image.flip(-1), config))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        normalize_image(torch.zeros(4, 8, 8, dtype=torch.uint8), config)


def test_image_to_tensor_accepts_what_the_inference_api_passes(tmp_path):
    image = random_image(12, 10)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    path = tmp_path / "picture.png"
    pil.save(path)
    for source in (pil, path, str(path), path.read_bytes(), image.permute(1, 2, 0).numpy(), image):
        assert torch.equal(image_to_tensor(source), image)
    assert torch.equal(image_to_tensor(pil.convert("L")), image_to_tensor(pil.convert("L").convert("RGB")))
    as_float = image.float() / 255
    assert torch.equal(image_to_tensor(as_float), as_float)
    assert image_to_tensor(image[:1]).shape == (3, 12, 10)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        image_to_tensor(image.float())
    with pytest.raises(TypeError, match="cannot read an image"):
        image_to_tensor(42)


def test_preprocess_image_outputs_normalised_square_floats():
    config = ImagePreprocessConfig(image_size=32)
    image = random_image(40, 50)
    evaluated = preprocess_image(image, config)
    assert evaluated.shape == (3, 32, 32) and evaluated.dtype == torch.float32
    torch.testing.assert_close(evaluated, normalize_image(eval_crop(image, config), config))
    trained = preprocess_image(image, config, train=True, rng=random.Random(0))
    torch.testing.assert_close(trained, normalize_image(train_crop(image, config, random.Random(0)), config))
    # Normalised pixels of a uniform image span exactly the CLIP-normalised range of [0, 255].
    low = (0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    high = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert bool((evaluated.amin(dim=(1, 2)) >= low - 1e-5).all() and (evaluated.amax(dim=(1, 2)) <= high + 1e-5).all())


def test_collate_images_stacks_and_checks_shapes():
    images = [random_image(8, 8, seed) for seed in range(3)]
    assert torch.equal(collate_images(images), torch.stack(images))
    with pytest.raises(ValueError, match="image 1"):
        collate_images([images[0], random_image(9, 8)])


# Transparency ---------------------------------------------------------------------------

# Three pixels of colour (200, 100, 50) at alpha 0, 128 and 255, and a fourth of (0, 0, 0) at alpha 64.
RGBA_PIXELS = np.array([[[200, 100, 50, 0], [200, 100, 50, 128]], [[200, 100, 50, 255], [0, 0, 0, 64]]], np.uint8)
# round((c * a + b * (255 - a)) / 255) worked out by hand for each pixel, (H, W, 3):
# on white, alpha 128: (25600 + 32385) / 255 = 227.39, (12800 + 32385) / 255 = 177.20, (6400 + 32385) / 255 = 152.10;
# alpha 64 over black: 255 * 191 / 255 = 191 exactly.
ON_WHITE = np.array([[[255, 255, 255], [227, 177, 152]], [[200, 100, 50], [191, 191, 191]]], np.uint8)
# on black, alpha 128: 25600 / 255 = 100.39, 12800 / 255 = 50.20, 6400 / 255 = 25.10.
ON_BLACK = np.array([[[0, 0, 0], [100, 50, 25]], [[200, 100, 50], [0, 0, 0]]], np.uint8)
# on (10, 20, 30), alpha 128: (25600 + 1270) / 255 = 105.37, (12800 + 2540) / 255 = 60.16, (6400 + 3810) / 255 = 40.04;
# alpha 64 over black: (1910, 3820, 5730) / 255 = 7.49, 14.98, 22.47.
ON_NAVY = np.array([[[10, 20, 30], [105, 60, 40]], [[200, 100, 50], [7, 15, 22]]], np.uint8)


def chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


@pytest.mark.parametrize(("background", "expected"), [(WHITE, ON_WHITE), ((0, 0, 0), ON_BLACK), ((10, 20, 30), ON_NAVY)])
def test_rgba_png_is_composited_onto_the_background(background, expected):
    png = pil_bytes(Image.fromarray(RGBA_PIXELS, "RGBA"), "PNG")
    assert torch.equal(decode_image(png, background), chw(expected))
    assert torch.equal(composite_alpha(chw(RGBA_PIXELS), background), chw(expected))
    webp = pil_bytes(Image.fromarray(RGBA_PIXELS, "RGBA"), "WEBP")  # WebP without loss keeps alpha too
    lossless = io.BytesIO()
    Image.fromarray(RGBA_PIXELS, "RGBA").save(lossless, format="WEBP", lossless=True, exact=True)
    assert webp and torch.equal(decode_image(lossless.getvalue(), background), chw(expected))


def test_grey_alpha_and_palette_transparency_are_composited():
    # Grey 80 at alpha 64 on white: (80 * 64 + 255 * 191) / 255 = 211.08 -> 211.
    grey = Image.fromarray(np.array([[[80, 64], [80, 255]]], np.uint8), "LA")
    assert decode_image(pil_bytes(grey, "PNG"))[:, 0].tolist() == [[211, 80]] * 3
    # A palette image whose index 0 is transparent: those pixels become the background exactly.
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 30, 60, 90] + [0] * 762)
    palette.putpixel((1, 0), 1)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=0)
    assert decode_image(buffer.getvalue(), (1, 2, 3))[:, 0].tolist() == [[1, 30], [2, 60], [3, 90]]
    # Without transparency a palette image is its colours, background or not.
    assert decode_image(pil_bytes(palette, "PNG"), (1, 2, 3))[:, 0].tolist() == [[0, 30], [0, 60], [0, 90]]
    # One transparent colour (a tRNS chunk in an RGB or grey PNG): its pixels become the background.
    rgb = Image.fromarray(np.array([[[0, 0, 1], [0, 0, 2]]], np.uint8), "RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", transparency=(0, 0, 1))
    assert decode_image(buffer.getvalue(), (7, 8, 9))[:, 0].tolist() == [[7, 0], [8, 0], [9, 2]]
    buffer = io.BytesIO()
    Image.fromarray(np.array([[200, 201]], np.uint8), "L").save(buffer, format="PNG", transparency=200)
    assert decode_image(buffer.getvalue())[:, 0].tolist() == [[255, 201]] * 3


def test_every_input_kind_composites_the_same_way(tmp_path):
    pil = Image.fromarray(RGBA_PIXELS, "RGBA")
    path = tmp_path / "stamp.png"
    pil.save(path)
    expected = chw(ON_BLACK)
    for source in (pil, path, path.read_bytes(), RGBA_PIXELS, chw(RGBA_PIXELS)):
        assert torch.equal(image_to_tensor(source, (0, 0, 0)), expected)
    palette = Image.new("P", (1, 1))
    palette.info["transparency"] = 0
    assert image_to_tensor(palette, (9, 8, 7))[:, 0, 0].tolist() == [9, 8, 7]
    as_float = composite_alpha(chw(RGBA_PIXELS).float() / 255, WHITE)
    torch.testing.assert_close(as_float * 255, chw(ON_WHITE).float(), rtol=0, atol=0.5)
    # preprocess_image reads the background from the config.
    config = ImagePreprocessConfig(image_size=2, background=(0, 0, 0))
    torch.testing.assert_close(preprocess_image(pil, config), normalize_image(expected, config))


def test_background_is_checked_and_old_checkpoints_load_with_white(tmp_path):
    with pytest.raises(ValueError, match=r"image_preprocess.background must be three integers in \[0, 255\]"):
        ImagePreprocessConfig(background=(256, 0, 0))
    with pytest.raises(ValueError, match="background must be three integers"):
        composite_alpha(chw(RGBA_PIXELS), (0.5, 0.5, 0.5))
    assert from_dict(ImagePreprocessConfig, {"background": [0, 0, 0]}).background == (0, 0, 0)
    model = MultimodalModel(tiny(["text", "image"]))
    model.config.image_preprocess.background = (0, 0, 0)
    save_checkpoint(model, tmp_path / "new")
    assert load_model(tmp_path / "new").config.image_preprocess.background == (0, 0, 0)
    # A checkpoint written before the field existed: its config.json has no "background".
    save_checkpoint(model, tmp_path / "old")
    config_path = tmp_path / "old" / "config.json"
    config = json.loads(config_path.read_text())
    del config["model"]["image_preprocess"]["background"]
    config_path.write_text(json.dumps(config))
    assert load_model(tmp_path / "old").config.image_preprocess.background == WHITE
    assert to_dict(ImagePreprocessConfig())["background"] == [255, 255, 255]
