"""Image augmentation: each transform by hand, at its neutral setting, and the seeded draw of all of them."""
from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from multimodal.data.preprocess.augment_config import (
    AffineAugment,
    BlurAugment,
    ContrastAugment,
    ImageAugmentConfig,
    InvertAugment,
    ResolutionAugment,
    StrokeAugment,
)
from multimodal.data.preprocess.augment_image import (
    adjust_contrast,
    affine,
    augment_image,
    border_colour,
    change_stroke,
    gaussian_blur,
    invert,
    lower_resolution,
)
from multimodal.data.preprocess.image_transforms import resize

EVERY_LEVER = {
    "affine": ImageAugmentConfig(affine=AffineAugment(p=1.0)),
    "stroke": ImageAugmentConfig(stroke=StrokeAugment(p=1.0)),
    "resolution": ImageAugmentConfig(resolution=ResolutionAugment(p=1.0)),
    "blur": ImageAugmentConfig(blur=BlurAugment(p=1.0)),
    "contrast": ImageAugmentConfig(contrast=ContrastAugment(p=1.0)),
    "invert": ImageAugmentConfig(invert=InvertAugment(p=1.0)),
}
ALL_ON = ImageAugmentConfig(**{name: getattr(config, name) for name, config in EVERY_LEVER.items()})
# Every lever applied, each at the setting that changes nothing.
NEUTRAL = ImageAugmentConfig(
    affine=AffineAugment(p=1.0, rotation_degrees=0.0, scale=(1.0, 1.0), shear_degrees=0.0, translate=0.0),
    stroke=StrokeAugment(p=1.0, thickness=(0.0, 0.0)),
    resolution=ResolutionAugment(p=1.0, min_size=64),
    blur=BlurAugment(p=1.0, sigma=(0.0, 0.0)),
    contrast=ContrastAugment(p=1.0, factor=(1.0, 1.0), brightness=(0.0, 0.0)),
)


def digit(size: int = 32, light_on_dark: bool = True) -> torch.Tensor:
    """A grey "7" (uint8 (3, size, size)): a bar and a diagonal, antialiased by a blur."""
    canvas = torch.zeros(size, size)
    canvas[size // 4, size // 4 : 3 * size // 4] = 1.0
    for row in range(size // 4, 3 * size // 4):
        canvas[row, 3 * size // 4 - (row - size // 4) // 2] = 1.0
    canvas = gaussian_blur(canvas[None] * 255, 0.6)[0]
    if not light_on_dark:
        canvas = 255 - canvas
    return canvas.round().clamp(0, 255).to(torch.uint8).expand(3, size, size).contiguous()


def photo(height: int = 24, width: int = 40, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(3, height, width, generator=generator) * 255).to(torch.uint8)


@pytest.mark.parametrize("lever", sorted(EVERY_LEVER))
@pytest.mark.parametrize("image", [digit(), photo()], ids=["grey square", "colour 24x40"])
def test_each_lever_keeps_shape_dtype_range_and_is_seeded(lever, image):
    config = EVERY_LEVER[lever]
    out = augment_image(image, config, random.Random(3))
    assert out.shape == image.shape and out.dtype == torch.uint8 and out.is_contiguous()
    assert torch.equal(out, augment_image(image, config, random.Random(3)))
    if lever != "invert":  # the only lever without a parameter to draw
        others = [augment_image(image, config, random.Random(seed)) for seed in range(4, 8)]
        assert any(not torch.equal(out, other) for other in others)
    assert not torch.equal(out, image)


def test_levers_that_are_off_return_the_image_and_draw_nothing():
    image = photo()
    rng = random.Random(1)
    state = rng.getstate()
    assert augment_image(image, ImageAugmentConfig(), rng) is image
    assert rng.getstate() == state


@pytest.mark.parametrize("image", [digit(), photo(), photo().permute(1, 2, 0).contiguous().permute(2, 0, 1)],
                         ids=["grey", "colour", "channels-last view"])
def test_every_lever_at_its_neutral_setting_changes_nothing(image):
    assert torch.equal(augment_image(image, NEUTRAL, random.Random(0)), image)


def test_grey_images_are_augmented_on_one_channel_exactly_as_on_three():
    image = digit()
    for seed in range(5):
        fast = augment_image(image, ALL_ON, random.Random(seed))
        # The same draws applied to a colour image whose channels happen to differ by nothing
        # but a tiny tint in one corner pixel (so the grey shortcut is not taken).
        tinted = image.clone()
        tinted[0, 16, 16] ^= 1
        slow = augment_image(tinted, ALL_ON, random.Random(seed))
        assert (fast.int() - slow.int()).abs().max() <= 1
        assert torch.equal(fast[0], fast[1]) and torch.equal(fast[1], fast[2])


def test_rotation_by_90_degrees_turns_counter_clockwise():
    image = photo(16, 16).float()
    turned = affine(image, angle_degrees=90.0, scale=1.0, shear_degrees=(0.0, 0.0), translate_pixels=(0.0, 0.0),
                    fill=torch.zeros(3))
    # torch.rot90 with k=1 moves the top row to the left column: counter-clockwise as displayed.
    torch.testing.assert_close(turned, torch.rot90(image, 1, dims=(1, 2)), atol=1e-3, rtol=0)


def test_translation_moves_whole_pixels_and_fills_with_the_given_colour():
    image = photo(10, 12).float()
    fill = torch.tensor([1.0, 2.0, 3.0])
    moved = affine(image, angle_degrees=0.0, scale=1.0, shear_degrees=(0.0, 0.0), translate_pixels=(3.0, -2.0),
                   fill=fill)
    torch.testing.assert_close(moved[:, :-2, 3:], image[:, 2:, :-3], atol=1e-3, rtol=0)
    torch.testing.assert_close(moved[:, :, :3], fill.view(3, 1, 1).expand(3, 10, 3), atol=1e-3, rtol=0)
    torch.testing.assert_close(moved[:, -2:, :], fill.view(3, 1, 1).expand(3, 2, 12), atol=1e-3, rtol=0)


def test_shear_and_scale_move_a_point_where_the_matrix_says():
    size = 21  # odd: the centre is a pixel, (u, v) = (column - 10, row - 10)
    image = torch.zeros(1, size, size)
    image[0, 10 + 4, 10] = 255.0  # (u, v) = (0, 4)
    # Horizontal shear of 45 degrees: u' = u + v -> (4, 4).
    sheared = affine(image, angle_degrees=0.0, scale=1.0, shear_degrees=(45.0, 0.0), translate_pixels=(0.0, 0.0),
                     fill=torch.zeros(1))
    assert divmod(int(sheared[0].argmax()), size) == (14, 14)
    # Scale 2 about the centre: (0, 4) -> (0, 8).
    zoomed = affine(image, angle_degrees=0.0, scale=2.0, shear_degrees=(0.0, 0.0), translate_pixels=(0.0, 0.0),
                    fill=torch.zeros(1))
    assert divmod(int(zoomed[0].argmax()), size) == (18, 10)


def test_affine_fills_uncovered_corners_with_the_border_colour():
    image = torch.full((3, 20, 20), 30, dtype=torch.uint8)
    image[:, 2:18, 2:18] = 200
    config = ImageAugmentConfig(
        affine=AffineAugment(p=1.0, rotation_degrees=45.0, scale=(1.0, 1.0), shear_degrees=0.0, translate=0.0)
    )
    out = augment_image(image, config, random.Random(0))
    assert torch.equal(border_colour(image.float()), torch.tensor([30.0, 30.0, 30.0]))
    assert int(out[0, 0, 0]) == 30 and int(out[0, 10, 10]) == 200


@pytest.mark.parametrize("light_on_dark", [True, False])
def test_stroke_thickness_in_whole_and_half_pixels(light_on_dark):
    ink, paper = (255.0, 0.0) if light_on_dark else (0.0, 255.0)
    image = torch.full((1, 9, 9), paper)
    image[0, :, 4] = ink  # a vertical line one pixel wide
    thick = change_stroke(image, 1.0, ink_is_dark=not light_on_dark)
    assert torch.equal(thick[0, 4], torch.tensor([paper] * 3 + [ink] * 3 + [paper] * 3))
    half = change_stroke(image, 0.5, ink_is_dark=not light_on_dark)
    middle = (ink + paper) / 2
    assert torch.equal(half[0, 4], torch.tensor([paper] * 3 + [middle, ink, middle] + [paper] * 3))
    # Thinning the three-pixel line by one pixel of radius gives the one-pixel line back.
    assert torch.equal(change_stroke(thick, -1.0, ink_is_dark=not light_on_dark), image)
    assert change_stroke(image, 0.0, ink_is_dark=False) is image


def test_the_ink_side_is_read_from_the_border():
    dark_ink = digit(light_on_dark=False)
    config = ImageAugmentConfig(stroke=StrokeAugment(p=1.0, thickness=(1.0, 1.0)))
    out = augment_image(dark_ink, config, random.Random(0))
    assert int((out < 128).sum()) > int((dark_ink < 128).sum())  # more dark pixels: thicker ink


def test_resolution_lowered_to_8_pixels_is_what_evaluation_makes_of_an_8x8_image():
    small = digit(8)  # uint8 (3, 8, 8), as a scanner at 8 x 8 would give it
    blocky = small.float().repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)  # (3, 32, 32), 4 x 4 blocks
    lowered = lower_resolution(blocky, 8)  # area average: the 8 x 8 image exactly, then bicubic up
    torch.testing.assert_close(lowered, resize(small.float(), 32, 32, TF.InterpolationMode.BICUBIC))
    # eval_crop upscales the uint8 image (its kernels round and clamp between the two passes).
    evaluated = resize(small, 32, 32, TF.InterpolationMode.BICUBIC).float()
    difference = (lowered.round().clamp(0, 255) - evaluated).abs()
    assert float(difference.mean()) < 0.25 and float(difference.max()) <= 2
    assert lower_resolution(blocky, 32) is blocky


def test_blur_matches_torchvision_and_keeps_the_mass():
    image = torch.zeros(1, 25, 25)
    image[0, 12, 12] = 1000.0
    sigma = 1.5
    ours = gaussian_blur(image, sigma)
    theirs = TF.gaussian_blur(image, kernel_size=[2 * 5 + 1] * 2, sigma=[sigma, sigma])  # radius ceil(3 * 1.5) = 5
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-4)
    assert float(ours.sum()) == pytest.approx(1000.0, rel=1e-5)
    rows = torch.arange(25, dtype=torch.float32) - 12
    variance = float((ours[0].sum(dim=1) * rows**2).sum() / ours.sum())
    assert variance == pytest.approx(sigma**2, rel=0.01)
    assert gaussian_blur(image, 0.0) is image


def test_contrast_brightness_and_inversion_by_hand():
    image = torch.tensor([[[0.0, 100.0], [200.0, 100.0]]])  # mean 100
    assert torch.equal(adjust_contrast(image.clone(), 0.5, 0.0), torch.tensor([[[50.0, 100.0], [150.0, 100.0]]]))
    torch.testing.assert_close(adjust_contrast(image.clone(), 1.0, 0.1), image + 25.5)
    assert torch.equal(invert(image), torch.tensor([[[255.0, 155.0], [55.0, 155.0]]]))
    uint8 = photo()
    assert torch.equal(augment_image(uint8, EVERY_LEVER["invert"], random.Random(0)), 255 - uint8)
    bright = ImageAugmentConfig(contrast=ContrastAugment(p=1.0, factor=(1.0, 1.0), brightness=(1.0, 1.0)))
    assert torch.equal(augment_image(uint8, bright, random.Random(0)), torch.full_like(uint8, 255))  # clamped


def test_probability_applies_a_lever_to_that_share_of_samples():
    image = photo()
    config = ImageAugmentConfig(invert=InvertAugment(p=0.3))
    applied = sum(not torch.equal(augment_image(image, config, random.Random(seed)), image) for seed in range(1000))
    assert 240 <= applied <= 360  # binomial(1000, 0.3): mean 300, sd 14.5


def test_a_wrong_image_layout_is_refused():
    with pytest.raises(ValueError, match=r"uint8 image \(3, H, W\), got torch.uint8 \(32, 32, 3\)"):
        augment_image(photo(32, 32).permute(1, 2, 0).contiguous(), ALL_ON, random.Random(0))


def test_the_sampling_grid_is_affine_grids():
    import torch.nn.functional as F

    from multimodal.data.preprocess.augment_image import _pixel_centres

    theta = torch.tensor([[0.9, 0.2, 0.1], [-0.3, 1.1, -0.05]])
    ours = (_pixel_centres(7, 12) @ theta.T).view(1, 7, 12, 2)
    torch.testing.assert_close(ours, F.affine_grid(theta[None], [1, 1, 7, 12], align_corners=False))


def test_a_batch_is_augmented_as_its_images_one_by_one():
    from multimodal.data.preprocess.augment_image import augment_images, draw_image_levers

    mixed = ImageAugmentConfig(**{name: replace(getattr(ALL_ON, name), p=0.6) for name in EVERY_LEVER})
    for images in ([digit(), digit(light_on_dark=False), digit(), digit()], [digit(), photo(32, 32, 1), photo(32, 32, 2)]):
        draws = [draw_image_levers(mixed, random.Random(seed), 32) for seed in range(len(images))]
        draws[0] = None  # a row that drew nothing is copied as it is
        batch = augment_images(torch.stack(images), draws)
        assert torch.equal(batch[0], images[0])
        for row in range(1, len(images)):
            alone = augment_image(images[row], mixed, random.Random(row))  # the same draws
            assert (batch[row].int() - alone.int()).abs().max() <= 1, row  # float sums in another order
    plain = torch.stack([digit(), photo(32, 32)])
    assert augment_images(plain, [None, None]) is plain
    with pytest.raises(ValueError, match="1 draws for 2 images"):
        augment_images(plain, [None])


def test_lowering_rows_at_once_gives_lower_resolution_pixels():
    from multimodal.data.preprocess.augment_image import lower_resolution_rows, resolution_map

    generator = torch.Generator().manual_seed(0)
    for height, width in ((32, 32), (24, 40), (37, 29)):
        images = torch.rand(6, 3, height, width, generator=generator) * 255
        sizes = [8, 8, 13, 21, max(height, width) - 1, max(height, width)]
        together = lower_resolution_rows(images, sizes)
        for row, size in enumerate(sizes):
            torch.testing.assert_close(together[row], lower_resolution(images[row], size), atol=2e-3, rtol=0)
        torch.testing.assert_close(together[-1], images[-1], atol=2e-3, rtol=0)  # not larger than size: unchanged
    # The maps keep a flat image flat (their rows sum to one) and differ between sizes.
    for axis in (0, 1):
        torch.testing.assert_close(resolution_map(24, 40, 9, axis).sum(dim=1), torch.ones((24, 40)[axis]))
    assert not torch.allclose(resolution_map(32, 32, 8, 0), resolution_map(32, 32, 9, 0))
