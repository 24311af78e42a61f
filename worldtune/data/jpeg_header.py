"""The EXIF orientation and stored size of a JPEG, read from its header without decoding it.

OpenCV applies the orientation of the file's first EXIF block when it decodes; knowing it before
decoding lets `image_files.read_image_bgr` pick the frame of the annotation in one decode.
"""
import os


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they give the stored size.
_JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_orientation(path) -> tuple[int, tuple[int, int]] | None:
    """(EXIF orientation, stored (height, width)) of a JPEG, from the markers before its pixel data
    (no decode); the orientation is that of the first EXIF block, as OpenCV reads it, and 1 without
    one. None for another format or a header that cannot be walked."""
    orientation = None
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\xff\xd8":
                return None
            while True:
                marker = f.read(2)
                while marker[1:] == b"\xff":  # fill bytes before a marker
                    marker = marker[1:] + f.read(1)
                if len(marker) < 2 or marker[0] != 0xFF or marker[1] in (0xD9, 0xDA):  # end, or pixels first
                    return None
                if marker[1] == 0x01 or 0xD0 <= marker[1] <= 0xD7:  # markers without a segment
                    continue
                length = int.from_bytes(f.read(2), "big") - 2
                if length < 0:
                    return None
                if marker[1] in _JPEG_FRAME_MARKERS:
                    body = f.read(5)
                    if len(body) < 5:
                        return None
                    stored_hw = (int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"))
                    return orientation or 1, stored_hw
                if marker[1] == 0xE1 and orientation is None:
                    body = f.read(length)
                    if body.startswith(b"Exif\x00\x00"):
                        orientation = _tiff_orientation(body[6:])
                else:
                    f.seek(length, os.SEEK_CUR)
    except OSError:
        return None


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of the first directory of an EXIF block, 1 where it has none."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    start = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[start:start + 2], order)
    for entry in range(start + 2, min(start + 2 + 12 * count, len(tiff) - 9), 12):
        if tiff[entry:entry + 2] == (0x0112).to_bytes(2, order):
            return int.from_bytes(tiff[entry + 8:entry + 10], order)  # a SHORT, first in the value field
    return 1
