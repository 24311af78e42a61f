"""Image files on disk: whether one looks like a picture and is whole (two small reads, no decode),
and decoding one in the frame of its annotation (EXIF orientation).
"""
import os

import cv2
import numpy as np

from worldtune.data.jpeg_header import jpeg_orientation


# First bytes of JPEG, PNG, BMP, GIF, TIFF, JPEG 2000, portable any-maps, Sun raster and OpenEXR files.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"GIF8", b"II*\x00", b"MM\x00*", b"\x00\x00\x00\x0cjP",
                b"\xff\x4f\xff\x51", b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7", b"Pf", b"PF",
                b"\x59\xa6\x6a\x95", b"\x76\x2f\x31\x01")


def image_file_problem(path) -> str | None:
    """"not_pictures" for a file (or none) whose first bytes match no picture format OpenCV commonly
    reads (a text or HTML page saved as .jpg, an empty file); "cut_short" for a JPEG without its end
    marker (FF D9) in its last 64 bytes, which OpenCV decodes without an error, the missing rows grey;
    else None. Two small reads, no decode."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            if not head.startswith(_IMAGE_MAGIC) and head[8:12] != b"WEBP":
                return "not_pictures"
            if not head.startswith(b"\xff\xd8\xff"):
                return None
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 64, 0))
            return None if b"\xff\xd9" in f.read() else "cut_short"
    except OSError:
        return "not_pictures"


# The check cannot tell a JPEG cut short from one with data appended after its end marker.
MOTION_PHOTO_NOTE = "unless data was appended after the image, as motion photos do: then it is whole"


def jpeg_cut_short(path) -> bool:
    return image_file_problem(path) == "cut_short"


def exif_frame_unknown(orientation: int, expected_hw: tuple) -> bool:
    """Whether an image's (height, width) in the annotation file cannot tell if its annotator applied
    the EXIF `orientation` (2-8 turn or mirror it; 1 and invalid values do nothing): always for a
    half turn or a mirror (2-4), and for a quarter turn (5-8) when the image is square."""
    return orientation in (2, 3, 4) or (orientation in (5, 6, 7, 8) and expected_hw[0] == expected_hw[1])


def read_image_bgr(path, expected_hw: tuple | None = None, header: tuple | None = None) -> np.ndarray | None:
    """uint8 [H, W, 3] BGR (grayscale, 16-bit, RGBA expanded or reduced by OpenCV), or None if unreadable.

    The EXIF orientation is applied, as OpenCV and the official loader apply it, unless it turns the
    image by 90 degrees (5-8) and the stored pixels have exactly the size `expected_hw` (the
    annotation's (height, width), not square): the file was then annotated by a tool that shows the
    stored pixels (pycocotools-based ones do), so its boxes are in that frame, and rotating would
    misplace them. A JPEG is decoded once, in the frame its header calls for (`header`: its
    `jpeg_orientation`, read here when not given); another format is decoded again when the
    orientation turned it out of the annotation's frame.
    """
    if expected_hw is None:
        return cv2.imread(str(path), cv2.IMREAD_COLOR)
    expected = (int(expected_hw[0]), int(expected_hw[1]))
    header = header or jpeg_orientation(path)
    if header is not None:
        orientation, stored_hw = header
        as_stored = orientation in (5, 6, 7, 8) and stored_hw == expected and expected[0] != expected[1]
        return cv2.imread(str(path), cv2.IMREAD_COLOR | (cv2.IMREAD_IGNORE_ORIENTATION if as_stored else 0))
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is not None and img.shape[:2] != expected and img.shape[:2] == expected[::-1]:
        stored = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if stored is not None and stored.shape[:2] == expected:
            return stored
    return img
