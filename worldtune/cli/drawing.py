"""Box labels drawn on pictures (predict's results, show-data's samples)."""
from pathlib import Path

import cv2
import numpy as np


def draw_label(img: np.ndarray, text: str, x: int, y: int, colour: tuple, font_scale: float = 0.4,
               thick: int = 1) -> None:
    """`text` on a filled box of `colour` (BGR) above the point (x, y), or below it at the top edge;
    dark ink on light colours and white on dark ones (ITU-R 601 luma), so any colour stays readable."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
    ty = y - base - 2 if y - th - base - 2 >= 0 else y + th + 2
    cv2.rectangle(img, (x, ty - th - 2), (x + tw + 2, ty + base), colour, -1)
    b, g, r = colour
    ink = (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)
    cv2.putText(img, text, (x + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink, thick, cv2.LINE_AA)


def write_image(path, bgr: np.ndarray) -> None:
    """Encode `bgr` in the format of `path`'s suffix and write it whole or not at all. (cv2.imwrite
    tells a failure, a full disk or no permission, only by returning False, without its cause.)"""
    from worldtune.outputs import write_bytes

    try:
        ok, encoded = cv2.imencode(Path(path).suffix or ".", bgr)
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"cannot write the image {path}: OpenCV writes no picture named {Path(path).suffix!r} "
                         f"(use .jpg or .png)")
    write_bytes(path, encoded.tobytes())
