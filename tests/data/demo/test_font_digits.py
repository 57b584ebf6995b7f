"""Printed digits framed as MNIST frames its handwriting: checked against MNIST itself."""
import numpy as np
import pytest

from multimodal.data.demo.dataset import font_paths, load_mnist_digits
from multimodal.data.demo.font_digits import BOX_SIZE, FRAME_SIZE, Rendering, mnist_frame, render_digit


def ink_box(image: np.ndarray) -> tuple[int, int]:
    rows, columns = np.nonzero(image)
    return rows.max() - rows.min() + 1, columns.max() - columns.min() + 1


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    mass = image.astype(np.float64)
    total = mass.sum()
    return (mass.sum(axis=1) @ np.arange(mass.shape[0])) / total, (mass.sum(axis=0) @ np.arange(mass.shape[1])) / total


def test_mnist_frame_reproduces_mnist_digits():
    # MNIST's own digits are already framed: framing them again changes (almost) none.
    images, _ = load_mnist_digits()
    unchanged = sum(np.array_equal(mnist_frame(image), image) for image in images[:1000])
    assert unchanged >= 995


def test_mnist_frame_on_an_odd_drawing():
    # A thin, off-centre, wide stroke on a large canvas (as a scan or a photo gives).
    drawing = np.zeros((300, 500), dtype=np.uint8)
    drawing[40:52, 300:480] = 200
    framed = mnist_frame(drawing)
    assert framed.shape == (FRAME_SIZE, FRAME_SIZE) and framed.dtype == np.uint8
    assert max(ink_box(framed)) == BOX_SIZE  # the longer side fills the box, the aspect kept
    assert ink_box(framed)[0] <= 2
    assert np.allclose(centre_of_mass(framed), (14, 14), atol=0.5)
    with pytest.raises(ValueError, match="no ink"):
        mnist_frame(np.zeros((28, 28), dtype=np.uint8))
    with pytest.raises(ValueError, match="grey uint8 image"):
        mnist_frame(np.zeros((28, 28, 3), dtype=np.uint8))


def test_rendered_digits_are_framed_and_differ_by_font_and_rendering():
    fonts = font_paths()
    sans, serif_italic = fonts[0], fonts[10]
    plain = render_digit(sans, 4)
    assert plain.shape == (28, 28) and plain.max() > 200 and max(ink_box(plain)) == BOX_SIZE
    assert np.allclose(centre_of_mass(plain), (14, 14), atol=0.5)
    assert np.abs(plain.astype(int) - render_digit(serif_italic, 4)).sum() > 5000
    assert np.array_equal(plain, render_digit(sans, 4))  # deterministic
    bold = render_digit(sans, 1, Rendering(stroke=4))
    thin = render_digit(sans, 1)
    assert (bold > 128).sum() > 1.2 * (thin > 128).sum()
    # A wider 1 has a wider ink box; a rotated one is not the upright one.
    assert ink_box(render_digit(sans, 1, Rendering(width=1.2)))[1] > ink_box(render_digit(sans, 1, Rendering(width=0.75)))[1]
    assert not np.array_equal(render_digit(sans, 7, Rendering(rotation=10)), render_digit(sans, 7))
    # Every font of the demo draws every digit, each digit differently.
    for font in fonts:
        digits = [render_digit(font, digit) for digit in range(10)]
        assert all(image.max() > 100 for image in digits), font.name
        assert len({image.tobytes() for image in digits}) == 10, font.name
    with pytest.raises(ValueError, match="digit must be 0-9"):
        render_digit(sans, 12)
