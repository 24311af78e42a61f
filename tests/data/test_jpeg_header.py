"""jpeg_orientation: the orientation OpenCV applies and the stored size, from a JPEG's header."""
import cv2
import numpy as np
import pytest

from worldtune.data.jpeg_header import jpeg_orientation


def _app1(body: bytes) -> bytes:
    return b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body


def _exif(orientation: int, order: str = "II") -> bytes:
    """An APP1 EXIF segment whose first directory holds only the Orientation tag (a SHORT)."""
    o = "little" if order == "II" else "big"
    tiff = (order.encode() + (42).to_bytes(2, o) + (8).to_bytes(4, o) + (1).to_bytes(2, o)
            + (0x0112).to_bytes(2, o) + (3).to_bytes(2, o) + (1).to_bytes(4, o) + orientation.to_bytes(2, o)
            + b"\0\0" + (0).to_bytes(4, o))
    return _app1(b"Exif\0\0" + tiff)


def _jpeg(path, segments: bytes = b"", h: int = 40, w: int = 60) -> None:
    """An h x w JPEG with `segments` right after its start marker."""
    ok, data = cv2.imencode(".jpg", np.zeros((h, w, 3), np.uint8))
    path.write_bytes(bytes(data[:2]) + segments + bytes(data[2:]))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("order", ["II", "MM"])
def test_the_orientation_is_the_one_opencv_applies(tmp_path, orientation, order):
    path = tmp_path / "a.jpg"
    _jpeg(path, _exif(orientation, order))
    assert jpeg_orientation(path) == (orientation, (40, 60))
    assert cv2.imread(str(path)).shape[:2] == ((60, 40) if orientation >= 5 else (40, 60))


@pytest.mark.parametrize("segments,orientation", [
    (b"", 1),  # no EXIF
    (_app1(b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta/>") + _exif(6), 6),  # an XMP block first
    (_exif(1) + _exif(6), 1),  # only the first EXIF block counts
    (_exif(6) + _exif(1), 6),
])
def test_the_first_exif_block_counts(tmp_path, segments, orientation):
    path = tmp_path / "a.jpg"
    _jpeg(path, segments)
    assert jpeg_orientation(path) == (orientation, (40, 60))
    assert cv2.imread(str(path)).shape[:2] == ((60, 40) if orientation >= 5 else (40, 60))


def test_other_files_have_no_header_to_read(tmp_path):
    _jpeg(tmp_path / "plain.jpg", _exif(6))
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 6, 3), np.uint8))
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "plain.jpg").read_bytes()[:40])  # before its frame header
    (tmp_path / "page.jpg").write_text("<html></html>")
    for name in ("a.png", "cut.jpg", "page.jpg", "missing.jpg"):
        assert jpeg_orientation(tmp_path / name) is None, name


@pytest.mark.parametrize("before", [b"\xff", b"\xff\x01", b"\xff\xd3"])  # a fill byte, TEM, RST3: no segment
def test_fill_bytes_and_markers_without_a_segment_are_stepped_over(tmp_path, before):
    path = tmp_path / "a.jpg"
    _jpeg(path, before + _exif(6))
    assert jpeg_orientation(path) == (6, (40, 60))
    assert cv2.imread(str(path)).shape[:2] == (60, 40)


@pytest.mark.parametrize("cut,orientation", [(6, 6), (7, 1)])
def test_an_exif_block_that_ends_inside_its_directory_is_read_as_far_as_it_goes(tmp_path, cut, orientation):
    """The Orientation value still counts when the block ends right after it (as for OpenCV), not one byte sooner."""
    path = tmp_path / "a.jpg"
    exif = _exif(6)[4:]  # without the APP1 marker and length
    _jpeg(path, _app1(exif[:len(exif) - cut]))
    assert jpeg_orientation(path) == (orientation, (40, 60))
    assert cv2.imread(str(path)).shape[:2] == ((60, 40) if orientation == 6 else (40, 60))


def test_a_header_that_ends_early_or_starts_the_pixels_first_gives_none(tmp_path):
    _jpeg(tmp_path / "plain.jpg")
    data = (tmp_path / "plain.jpg").read_bytes()
    frame = data.index(b"\xff\xc0")
    (tmp_path / "cut_frame.jpg").write_bytes(data[:frame + 8])  # the frame header cut inside its size
    (tmp_path / "scan_first.jpg").write_bytes(b"\xff\xd8\xff\xda\x00\x02" + data[frame:])
    tmp_path.joinpath("folder.jpg").mkdir()  # not a file: an OSError other than a missing file
    for name in ("cut_frame.jpg", "scan_first.jpg", "folder.jpg"):
        assert jpeg_orientation(tmp_path / name) is None, name
