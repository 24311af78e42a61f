"""Test-time inference: official pre-processing (keep-ratio resize + centred letterbox, pad 114),
forward, decoding and post-processing, with boxes returned in original image coordinates."""
import numbers
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from worldtune.data.transforms import letterbox_for_test  # noqa: F401 - part of this module's API
from worldtune.model.postprocess import PostprocessConfig, decode_outputs, detect_one_image


def read_image_rgb(source) -> np.ndarray:
    """A path, a PIL image or a uint8 array (H, W, 3) RGB, (H, W, 4) RGBA, (H, W) or (H, W, 1) grey
    -> RGB uint8 (H, W, 3). Arrays are taken as RGB: one from `cv2.imread` (BGR) needs `img[..., ::-1]`.
    A 16-bit file or PIL image gives its high byte."""
    if isinstance(source, (str, Path)):
        # checked first: OpenCV says only "None" (and logs a warning) for a missing file or a folder
        if Path(source).is_dir():
            raise ValueError(f"cannot read image {source}: it is a folder; pass the paths of its images, "
                             f"e.g. sorted(Path({str(source)!r}).glob('*.jpg'))")
        if not Path(source).is_file():
            raise ValueError(f"cannot read image {source}: no such file")
        img = cv2.imread(str(source), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot read image {source}: unreadable or not a decodable image")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if hasattr(source, "convert") and hasattr(source, "mode"):  # PIL: palette, CMYK, LA, 16-bit -> RGB
        if source.mode == "I" or source.mode.startswith("I;16"):
            # 16-bit grey: its high byte, as OpenCV reads the file (PIL's convert clips at 255: white)
            source = (np.clip(np.asarray(source), 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
        elif source.mode != "RGB":
            source = source.convert("RGB")
    img = np.asarray(source)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected one image of shape (H, W, 3), channels last, got {img.shape}")
    if img.dtype != np.uint8:
        hint = "; for 16 bits per channel pass (img >> 8).astype(np.uint8)" if img.dtype == np.uint16 else ""
        raise ValueError(f"expected a uint8 image (0-255), got {img.dtype}{hint}")
    if img.size == 0:
        raise ValueError(f"expected an image of at least 1 x 1 pixels, got shape {img.shape}")
    return np.ascontiguousarray(img[:, :, :3])


@torch.no_grad()
def predict_batch(model, images_uint8_rgb: Tensor, scale_factors, pad_params, ori_shapes,
                  cfg: PostprocessConfig | None = None, text_feats: Tensor | None = None) -> list[dict]:
    """Detections for a letterboxed batch, in original image pixels.

    Args:
        images_uint8_rgb: (B, 3, H, W) uint8 RGB.
        scale_factors, pad_params, ori_shapes: per image, as recorded by `letterbox_for_test`.
        text_feats: (B, K, 512), or None to use the model's vocabulary (`set_vocabulary`).
    Returns:
        B dicts with boxes_xyxy (N, 4), scores (N,), labels (N,) int64 indexing the vocabulary.
    """
    cfg = cfg or PostprocessConfig()
    param = next(model.parameters())
    images = images_uint8_rgb.to(param.device, non_blocking=True).to(param.dtype) / 255
    boxes, scores = decode_outputs(model(images, text_feats), model.strides)
    boxes, scores = boxes.float(), scores.float()
    return [detect_one_image(boxes[i], scores[i], cfg, tuple(scale_factors[i]), tuple(pad_params[i]),
                             tuple(ori_shapes[i])) for i in range(images.shape[0])]


@torch.no_grad()
def predict(model, images, imgsz: int = 640, cfg: PostprocessConfig | None = None,
            batch_size: int = 8) -> list[dict]:
    """Detect the model's vocabulary in images: one image or a list of them, each a path, a PIL
    image or a uint8 array (H, W, 3) in RGB order (see `read_image_rgb`; BGR arrays from OpenCV
    need `img[..., ::-1]`). `imgsz`: the letterbox size, a multiple of 32.

    Returns one dict per image: boxes_xyxy (N, 4) float in original pixels, scores (N,),
    labels (N,) int64 and `names` (list of N vocabulary strings).
    """
    if not model.vocabulary:
        raise RuntimeError("set a vocabulary first: model.set_vocabulary(['person', 'bus'])")
    model.vocabulary_feats()  # encoded now, or its error before any image is read
    if not isinstance(imgsz, numbers.Integral) or imgsz <= 0 or imgsz % 32:
        raise ValueError(f"imgsz must be a positive int multiple of 32 (the largest stride), e.g. 640, got {imgsz!r}")
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if cfg is not None and not isinstance(cfg, PostprocessConfig):
        raise TypeError(f"cfg must be a PostprocessConfig (worldtune.model.postprocess), e.g. "
                        f"PostprocessConfig(score_thr=0.25), got {type(cfg).__name__}")
    if isinstance(images, (str, Path, np.ndarray, Tensor)) or hasattr(images, "convert"):
        images = [images]  # one image
    if not isinstance(images, Iterable):
        raise TypeError("images must be one image (a path, a PIL image or a uint8 array) or a list of them, "
                        f"got {type(images).__name__}")
    images = list(images)  # also a generator or other iterable of images
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(images), batch_size):
            chunk = [read_image_rgb(s) for s in images[start:start + batch_size]]
            boxed = [letterbox_for_test(img, imgsz) for img in chunk]
            batch = torch.from_numpy(np.stack([b[0] for b in boxed])).permute(0, 3, 1, 2)
            dets = predict_batch(model, batch, [b[1] for b in boxed], [b[2] for b in boxed],
                                 [img.shape[:2] for img in chunk], cfg)
            for det in dets:
                det = {k: v.cpu() for k, v in det.items()}
                det["names"] = [model.vocabulary[i] for i in det["labels"].tolist()]
                results.append(det)
    finally:  # also after an unreadable image: a training loop's model stays in training mode
        model.train(was_training)
    return results
