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
