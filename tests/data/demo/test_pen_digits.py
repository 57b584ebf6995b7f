"""The simulated pen: its curves, its styles and its framing."""
import numpy as np
import pytest

from multimodal.data.demo.font_digits import BOX_SIZE, FRAME_SIZE
from multimodal.data.demo.pen_digits import STYLES, PenDrawing, catmull_rom, draw_digit, parse_style, stroke_paths


def test_catmull_rom_passes_through_every_point_and_two_points_give_a_segment():
    points = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, 1.0], [4.0, 4.0]])
    curve = catmull_rom(points, samples_per_segment=8)
    assert curve.shape == (3 * 8 + 1, 2)
    np.testing.assert_allclose(curve[::8], points, atol=1e-12)
    # Between two points the curve's tangent at a point is half the chord of its neighbours.
    step = 1e-4
    inner = catmull_rom(points, samples_per_segment=int(round(1 / step)))
    tangent = (inner[int(round(1 / step)) + 1] - inner[int(round(1 / step))]) / step
    np.testing.assert_allclose(tangent, (points[2] - points[0]) / 2, rtol=1e-3)
    line = catmull_rom(np.array([[0.0, 0.0], [2.0, 1.0]]), samples_per_segment=5)
    np.testing.assert_allclose(line, np.linspace([0.0, 0.0], [2.0, 1.0], 6), atol=1e-12)
    with pytest.raises(ValueError, match="two points or more"):
        catmull_rom(np.zeros((1, 2)))


def test_parse_style_splits_strokes_and_joins_pieces_at_their_corners():
    strokes = parse_style("0,0 | 1,0 | 1,1 0.5,1.5; 2,2 3,3")
    assert len(strokes) == 2
    first, second = strokes
    assert [piece.tolist() for piece in first] == [[[0, 0], [1, 0]], [[1, 0], [1, 1], [0.5, 1.5]]]
    assert [piece.tolist() for piece in second] == [[[2, 2], [3, 3]]]
    with pytest.raises(ValueError, match="two points or more"):
        parse_style("0,0; 1,1 2,2")


@pytest.mark.parametrize("digit", range(10))
def test_every_style_draws_an_mnist_framed_digit(digit):
    assert len(STYLES[digit]) >= 2
    for style in STYLES[digit]:
        image = draw_digit(digit, PenDrawing(style=style, pen=0.12, jitter=0.02, slant=0.2, width=0.9, rotation=5, seed=3))
        assert image.shape == (FRAME_SIZE, FRAME_SIZE) and image.dtype == np.uint8
        rows, columns = np.nonzero(image)
        # The ink's longer side is MNIST's box, and white ink reaches full strength inside the stroke.
        assert max(np.ptp(rows), np.ptp(columns)) + 1 == BOX_SIZE, style
        assert image.max() >= 250, style
        mass = image.astype(float)
        centre = (mass.sum(1) @ np.arange(FRAME_SIZE) / mass.sum(), mass.sum(0) @ np.arange(FRAME_SIZE) / mass.sum())
        assert np.allclose(centre, FRAME_SIZE / 2, atol=1.0), (style, centre)


def test_drawing_is_seeded():
    drawing = PenDrawing(style="curled tail", jitter=0.03, seed=7)
    assert np.array_equal(draw_digit(9, drawing), draw_digit(9, drawing))
    assert not np.array_equal(draw_digit(9, drawing), draw_digit(9, PenDrawing(style="curled tail", jitter=0.03, seed=8)))


def test_jitter_keeps_loops_closed_and_shared_points_joined():
    """A point named twice is one point: a loop's ends, a corner, where two strokes meet move together."""
    still_stem = stroke_paths(5, PenDrawing(style="two strokes", jitter=0.0))[0]
    for seed in range(3):
        drawing = PenDrawing(style="two loops", jitter=0.05, slant=0.2, rotation=8, seed=seed)
        top, bottom = stroke_paths(8, drawing)
        np.testing.assert_array_equal(top[0], top[-1])
        np.testing.assert_array_equal(bottom[0], bottom[-1])
        assert np.all(top == bottom[0], axis=1).any()  # the top loop passes where the bottom one starts
        stem, flag = stroke_paths(5, PenDrawing(style="two strokes", jitter=0.05, seed=seed))
        np.testing.assert_array_equal(stem[0], flag[0])
        # Unshared points each move on their own.
        assert not np.allclose(np.diff(stem, axis=0), np.diff(still_stem, axis=0))


def test_the_styles_differ_where_they_should():
    """A crossed 7 has ink across its middle, a footed 1 across its bottom, where the plain ones have little."""

    def widest_row(image, first, last):
        """The most pixels of strong ink in one row, among the ink's rows ``first`` to ``last`` (from its top)."""
        rows = np.flatnonzero(image.max(1) > 0)
        return (image[rows[0] + first : rows[0] + last + 1] > 128).sum(1).max()

    plain_seven, crossed_seven = (draw_digit(7, PenDrawing(style=s, jitter=0.0)) for s in ("plain", "crossed"))
    assert widest_row(crossed_seven, 5, 15) >= 2.5 * widest_row(plain_seven, 5, 15)
    bar, footed = (draw_digit(1, PenDrawing(style=s, jitter=0.0)) for s in ("bar", "flag and foot"))
    assert widest_row(footed, 17, 19) >= 2.5 * widest_row(bar, 17, 19)


def test_bad_digit_or_style_is_named():
    with pytest.raises(ValueError, match="digit must be 0-9, got 10"):
        draw_digit(10, PenDrawing(style="bar"))
    with pytest.raises(ValueError, match=r"no style 'bar' for 7; choose one of \['crossed'"):
        draw_digit(7, PenDrawing(style="bar"))
