"""Image decoding, crops and normalisation against torchvision's own transforms."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
from PIL import Image
from torchvision.io import encode_jpeg, encode_png

from multimodal.data.config import CLIP_MEAN, CLIP_STD, ImagePreprocessConfig
from multimodal.data.image import (
    collate_images,
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
    rgba = Image.fromarray(np.concatenate([image.permute(1, 2, 0).numpy(), np.full((20, 30, 1), 128, np.uint8)], 2))
    assert torch.equal(decode_image(pil_bytes(rgba, "PNG")), image)


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
