"""Batching: BGR HxWx3 numpy samples -> RGB uint8 [B, 3, H, W] tensors (official `yolow_collate` layout)."""
import math

import numpy as np
import torch


def _images_to_tensor(images: list) -> torch.Tensor:
    # BGR -> RGB here, once, so every transform before it keeps cv2's channel order.
    h, w = images[0].shape[:2]
    shape = (len(images), 3, h, w)
    if torch.utils.data.get_worker_info() is not None:
        # A DataLoader worker hands its batch over in shared memory: write it there directly instead
        # of into a private buffer that the hand-over then copies (as torch's default_collate does).
        out = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(math.prod(shape))).view(shape)
    else:
        out = torch.empty(shape, dtype=torch.uint8)
    batch = out.numpy()
    for i, img in enumerate(images):
        batch[i] = img[..., ::-1].transpose(2, 0, 1)
    return out


def collate_train(samples: list) -> dict:
    """Training batch.

    Returns:
        dict(images uint8 Tensor[B, 3, H, W] RGB,
             bboxes_labels float32 Tensor[N, 6] rows [image index, label, x1, y1, x2, y2] where
             label indexes that image's entry of `texts`,
             texts list of B lists of strings (num_texts each, '' = padding),
             image_ids list of B ints,
             warnings list of (category, message) raised while building the samples: see
             `loader.WarningsWithSample`).
        Polygons are dropped (official RemoveDataElement).
    """
    rows = []
    for i, s in enumerate(samples):
        n = len(s["labels"])
        rows.append(np.concatenate([np.full((n, 1), i, np.float32), s["labels"].reshape(n, 1).astype(np.float32),
                                    s["bboxes"].reshape(n, 4).astype(np.float32)], 1))
    return {"images": _images_to_tensor([s["img"] for s in samples]),
            "bboxes_labels": torch.from_numpy(np.concatenate(rows) if rows else np.zeros((0, 6), np.float32)),
            "texts": [list(s["texts"]) for s in samples],
            "image_ids": [s["image_id"] for s in samples],
            "warnings": [w for s in samples for w in s.get("warnings", ())]}


def collate_eval(samples: list) -> dict:
    """Evaluation batch.

    Returns:
        dict(images uint8 Tensor[B, 3, S, S] RGB, image_ids list[int], ori_shapes list of (h, w),
             scale_factors float32 Tensor[B, 2] (sx, sy), pad_params int64 Tensor[B, 4]
             [top, bottom, left, right], texts list of B lists of class names, skipped list[bool]:
             unreadable images under on_bad_data="skip", to leave out of the scoring, warnings as in
             `collate_train`).
        Map a letterboxed box back with (box - [left, top, left, top]) / [sx, sy, sx, sy].
    """
    return {"images": _images_to_tensor([s["img"] for s in samples]),
            "image_ids": [s["image_id"] for s in samples],
            "ori_shapes": [tuple(s["ori_shape"]) for s in samples],
            "scale_factors": torch.tensor([s["scale_factor"] for s in samples], dtype=torch.float32),
            "pad_params": torch.tensor([s["pad_param"] for s in samples], dtype=torch.int64),
            "texts": [list(s["texts"]) for s in samples],
            "skipped": [bool(s.get("skipped", False)) for s in samples],
            "warnings": [w for s in samples for w in s.get("warnings", ())]}
