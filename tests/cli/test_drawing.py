"""cli.drawing: where a box label goes, which ink it gets, and a failed image write."""
import cv2
import numpy as np
import pytest

from worldtune.cli.drawing import draw_label, write_image

BG = 100  # a grey background that neither ink (0 or 255) nor the label colours below use


def _label(y: int, colour: tuple, text: str = "cat"):
    img = np.full((60, 80, 3), BG, np.uint8)
    draw_label(img, text, 10, y, colour)
    rows, cols = np.nonzero((img != BG).any(axis=2))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
    return img, rows, cols, th, base


def test_label_sits_above_the_point_when_it_fits_and_below_at_the_top_edge():
    _, rows, cols, th, base = _label(40, (0, 200, 0))
    assert rows.max() < 40 and cols.min() == 10  # above y, starting at x
    # exactly tall enough above (y = th + base + 2): still above, the box's top row is row 0
    fit = th + base + 2
    _, rows, _, _, _ = _label(fit, (0, 200, 0))
    assert rows.min() == 0 and rows.max() < fit
    # at the top edge it goes below the point instead of off the picture
    _, rows, _, _, _ = _label(0, (0, 200, 0))
    assert rows.min() == 0 and rows.max() >= th


def _inks(colour: tuple) -> tuple[int, int]:
    """(dark pixels, white pixels) of the label: the text is anti-aliased, so 'dark' is every channel
    under 60 and 'white' every channel over 200 (neither fill colour below is either)."""
    img, rows, cols, _, _ = _label(40, colour)
    painted = img[rows, cols].astype(int)
    return int((painted.max(axis=1) < 60).sum()), int((painted.min(axis=1) > 200).sum())


def test_ink_is_dark_on_light_colours_and_white_on_dark_ones():
    # luma (0.299 R + 0.587 G + 0.114 B): yellow (B0 G255 R255) 225 > 140: dark ink; blue (B200 G0 R0) 23: white
    dark, white = _inks((0, 255, 255))
    assert dark > 0 and white == 0
    dark, white = _inks((200, 0, 0))
    assert dark == 0 and white > 0
    # green (B0 G200 R60) has luma 135.3, just under 140 (white ink); (B0 G200 R80) 141.3, just over (dark)
    assert _inks((0, 200, 60))[1] > 0 and _inks((0, 200, 80))[0] > 0


def test_a_failed_write_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(OSError, match=r"cannot write .*a_file/out.png: "):
        write_image(tmp_path / "a_file" / "out.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"out.xyz: OpenCV writes no picture named '.xyz'"):
        write_image(tmp_path / "out.xyz", np.zeros((4, 4, 3), np.uint8))
    write_image(tmp_path / "new_folder" / "out.png", np.zeros((4, 4, 3), np.uint8))  # made as needed
    assert (tmp_path / "new_folder" / "out.png").stat().st_size > 0
