import numpy as np
import torch

from worldtune.data.collate import collate_eval, collate_train


def test_collate_train_layout_and_rgb():
    img = np.zeros((4, 6, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    samples = [
        {"img": img, "bboxes": np.array([[1, 1, 3, 3]], np.float32), "labels": np.array([2]), "texts": ["a", "b", "c"],
         "image_id": 7},
        {"img": img, "bboxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "texts": ["x", "", ""],
         "image_id": 8},
        {"img": img, "bboxes": np.array([[0, 0, 1, 2], [2, 2, 4, 4]], np.float32), "labels": np.array([0, 1]),
         "texts": ["y", "z", ""], "image_id": 9},
    ]
    batch = collate_train(samples)
    assert batch["images"].shape == (3, 3, 4, 6) and batch["images"].dtype == torch.uint8
    assert (batch["images"][:, 2] == 255).all() and (batch["images"][:, 0] == 0).all()  # blue is channel 2 in RGB
    expected = torch.tensor([[0, 2, 1, 1, 3, 3], [2, 0, 0, 0, 1, 2], [2, 1, 2, 2, 4, 4]], dtype=torch.float32)
    assert torch.equal(batch["bboxes_labels"], expected)
    assert batch["texts"][1] == ["x", "", ""] and batch["image_ids"] == [7, 8, 9]


def test_collate_eval_fields():
    s = {"img": np.zeros((8, 8, 3), np.uint8), "image_id": 3, "ori_shape": (5, 8), "scale_factor": (1.0, 1.0),
         "pad_param": [1, 2, 0, 0], "texts": ["a"]}
    batch = collate_eval([s, s])
    assert batch["images"].shape == (2, 3, 8, 8) and batch["pad_params"].tolist() == [[1, 2, 0, 0]] * 2
    assert batch["scale_factors"].shape == (2, 2) and batch["ori_shapes"] == [(5, 8), (5, 8)]


def test_each_sample_keeps_its_own_pixels_in_batch_order():
    # Sample i is filled with BGR (i, 10 + i, 20 + i): in the batch, row i is RGB (20 + i, 10 + i, i).
    samples = [{"img": np.full((2, 3, 3), (i, 10 + i, 20 + i), np.uint8), "image_id": i, "ori_shape": (2, 3),
                "scale_factor": (1.0, 1.0), "pad_param": [0, 0, 0, 0], "texts": ["a"]} for i in range(3)]
    images = collate_eval(samples)["images"]
    assert images[:, :, 0, 0].tolist() == [[20 + i, 10 + i, i] for i in range(3)]
    assert (images == images[:, :, :1, :1]).all()  # every pixel of an image is its sample's colour
