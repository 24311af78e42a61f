"""Inputs of the Python prediction API: paths, arrays and PIL images of any mode become RGB uint8."""
import numpy as np
import pytest
from PIL import Image

from worldtune.model.detector import warn_repeated_texts
from worldtune.model.predict import read_image_rgb

RED = (255, 0, 0)


@pytest.mark.parametrize("make", [
    lambda: Image.new("RGB", (3, 2), RED),
    lambda: Image.new("RGB", (3, 2), RED).convert("P"),              # palette: indices, not colours
    lambda: Image.new("RGB", (3, 2), RED).convert("CMYK"),           # four channels that are not RGBA
    lambda: Image.new("RGBA", (3, 2), RED + (128,)),
])
def test_pil_images_of_any_mode_read_as_rgb(make):
    img = read_image_rgb(make())
    assert img.shape == (2, 3, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == RED


def test_grayscale_pil_and_arrays():
    assert tuple(read_image_rgb(Image.new("L", (2, 2), 7))[0, 0]) == (7, 7, 7)
    assert tuple(read_image_rgb(np.full((2, 2), 9, np.uint8))[1, 1]) == (9, 9, 9)
    with pytest.raises(ValueError, match="uint8"):
        read_image_rgb(np.zeros((2, 2, 3), np.float32))


def test_repeated_vocabulary_texts_warn():
    with pytest.warns(UserWarning, match=r"repeats \['cat'\]"):
        warn_repeated_texts(["cat", "dog", "cat"])


def test_files_read_as_rgb_and_rgba_arrays_lose_their_alpha(tmp_path):
    import cv2

    path = tmp_path / "red.png"
    cv2.imwrite(str(path), np.full((2, 3, 3), (0, 0, 255), np.uint8))  # red, in OpenCV's BGR order
    assert read_image_rgb(path)[0, 0].tolist() == list(RED) and read_image_rgb(str(path)).shape == (2, 3, 3)
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 7
    img = read_image_rgb(rgba)
    assert img.shape == (2, 3, 3) and img[0, 0].tolist() == list(RED)


def test_single_channel_arrays_read_as_grey():
    assert tuple(read_image_rgb(np.full((2, 2, 1), 9, np.uint8))[1, 1]) == (9, 9, 9)


def test_channels_first_arrays_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"channels last, got \(3, 4, 5\)"):
        read_image_rgb(np.zeros((3, 4, 5), np.uint8))


def test_a_missing_path_or_a_folder_is_named_with_what_is_wrong(tmp_path, capfd):
    # both used to say "missing file or not a decodable image", after OpenCV logged a warning
    with pytest.raises(ValueError, match=f"cannot read image {tmp_path / 'nope.jpg'}: no such file"):
        read_image_rgb(tmp_path / "nope.jpg")
    with pytest.raises(ValueError, match=r"it is a folder; pass the paths of its images, e\.g\. sorted\(Path"):
        read_image_rgb(str(tmp_path))
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg: unreadable or not a decodable image"):
        read_image_rgb(tmp_path / "notes.jpg")
    assert "nope.jpg" not in capfd.readouterr().err


def test_an_empty_array_is_refused_in_one_line():
    # (0, 5, 3) used to fail inside cv2.resize with an assertion
    with pytest.raises(ValueError, match=r"at least 1 x 1 pixels, got shape \(0, 5, 3\)"):
        read_image_rgb(np.zeros((0, 5, 3), np.uint8))


def test_a_16_bit_png_reads_as_its_8_bit_image(tmp_path):
    import cv2

    deep = np.random.default_rng(0).integers(0, 2**16, (4, 5, 3)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    img = read_image_rgb(tmp_path / "deep.png")
    assert img.dtype == np.uint8 and img.shape == (4, 5, 3)
    assert np.array_equal(img, (deep >> 8).astype(np.uint8)[..., ::-1])  # the high byte, BGR -> RGB
    with pytest.raises(ValueError, match=r"got uint16; for 16 bits per channel pass \(img >> 8\)"):
        read_image_rgb(deep)


def test_a_16_bit_grey_image_reads_the_same_from_its_path_and_from_pil(tmp_path):
    # PIL's convert("RGB") clips mode I;16 at 255: every pixel above 255 came out white
    import cv2

    grey = (np.arange(12).reshape(3, 4) * 5000).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    from_path = read_image_rgb(tmp_path / "grey.png")
    with Image.open(tmp_path / "grey.png") as pil:
        assert pil.mode.startswith("I")
        from_pil = read_image_rgb(pil)
    assert np.array_equal(from_pil, from_path) and from_path[..., 0].tolist() == (grey >> 8).tolist()
