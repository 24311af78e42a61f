"""model.predict: the Python prediction API over several batches."""
import numpy as np
import pytest
import torch

from worldtune.model import build_model
from worldtune.model.postprocess import PostprocessConfig
from worldtune.model.predict import predict


def test_predict_batches_every_image_and_restores_the_training_mode():
    torch.manual_seed(0)
    model = build_model("n", num_classes=2)
    model.set_vocabulary(["cat", "dog"], torch.nn.functional.normalize(torch.randn(2, 512), dim=-1))
    model.train()
    images = [np.zeros((40, 50, 3), np.uint8), np.full((30, 20, 3), 200, np.uint8), np.zeros((8, 8), np.uint8)]
    results = predict(model, images, imgsz=64, batch_size=2)  # two batches: 2 images, then 1
    assert len(results) == 3 and model.training
    assert all(set(r) == {"boxes_xyxy", "scores", "labels", "names"} for r in results)


def test_each_result_belongs_to_its_image_in_input_order():
    # Batched results must be those of each image predicted alone, in the order given.
    torch.manual_seed(0)
    model = build_model("n", num_classes=2)
    model.set_vocabulary(["cat", "dog"], torch.nn.functional.normalize(torch.randn(2, 512), dim=-1))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + 10 * i, 60 - 10 * i, 3), dtype=np.uint8) for i in range(3)]
    batched = predict(model, images, imgsz=64, batch_size=2)
    for image, result in zip(images, batched):
        (alone,) = predict(model, [image], imgsz=64, batch_size=1)
        assert len(alone["scores"]) > 0
        torch.testing.assert_close(torch.as_tensor(result["boxes_xyxy"]), torch.as_tensor(alone["boxes_xyxy"]))
        torch.testing.assert_close(torch.as_tensor(result["scores"]), torch.as_tensor(alone["scores"]))


def _model():
    torch.manual_seed(0)
    model = build_model("n", num_classes=2).eval()
    model.set_vocabulary(["cat", "dog"], torch.nn.functional.normalize(torch.randn(2, 512), dim=-1))
    return model


@pytest.mark.parametrize("imgsz", [100, 0, (64, 64)])
def test_imgsz_that_is_not_a_multiple_of_32_is_refused_in_one_line(imgsz):
    # 100 used to fail inside the neck ("Sizes of tensors must match")
    with pytest.raises(ValueError, match="imgsz must be a positive int multiple of 32"):
        predict(_model(), [np.zeros((40, 50, 3), np.uint8)], imgsz=imgsz)


def test_one_image_or_any_iterable_of_images():
    model = _model()
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    (listed,) = predict(model, [image], imgsz=64)
    for images in (image, torch.from_numpy(image), (im for im in [image])):
        (result,) = predict(model, images, imgsz=64)
        torch.testing.assert_close(result["boxes_xyxy"], listed["boxes_xyxy"])


@pytest.mark.parametrize("imgsz", [0, -64, 100, 64.0, "64", True])
def test_model_predict_refuses_a_bad_imgsz_instead_of_its_default(imgsz):
    # imgsz=0 used to fall back to the training size or 640 silently
    model = _model()
    model.trained_imgsz = 64
    with pytest.raises(ValueError, match="imgsz must be a positive int multiple of 32"):
        model.predict([np.zeros((40, 50, 3), np.uint8)], imgsz=imgsz)


def test_model_predict_defaults_imgsz_to_the_training_size():
    model = _model()
    model.trained_imgsz = 64
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    cfg = PostprocessConfig(score_thr=0.0)
    torch.testing.assert_close(model.predict(image, cfg=cfg)[0]["scores"],
                               predict(model, image, imgsz=64, cfg=cfg)[0]["scores"])


@pytest.mark.parametrize("kwargs,error,says", [
    ({"images": None}, TypeError, "images must be one image .* got NoneType"),
    ({"images": 5}, TypeError, "images must be one image .* got int"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive int, got 0"),
    ({"batch_size": 2.5}, ValueError, "batch_size must be a positive int, got 2.5"),
    ({"cfg": {"score_thr": 0.25}}, TypeError, r"cfg must be a PostprocessConfig .* got dict"),
])
def test_bad_arguments_are_refused_in_one_line(kwargs, error, says):
    # they failed deep: "'int' object is not iterable", "range() arg 3 must not be zero",
    # "'dict' object has no attribute 'score_thr'" (after the first batch was computed)
    args = {"images": [np.zeros((40, 50, 3), np.uint8)], "imgsz": 64, **kwargs}
    with pytest.raises(error, match=says):
        predict(_model(), **args)


def test_an_unreadable_image_leaves_the_training_mode_as_it_was(tmp_path):
    model = _model().train()
    with pytest.raises(ValueError, match="no such file"):
        predict(model, [np.zeros((40, 50, 3), np.uint8), tmp_path / "nope.jpg"], imgsz=64, batch_size=1)
    assert model.training


def test_an_empty_list_gives_no_results_and_mixed_sizes_one_each():
    model = _model()
    assert predict(model, [], imgsz=64) == []
    images = [np.zeros((40, 50, 3), np.uint8), np.zeros((300, 20, 3), np.uint8), np.zeros((7, 90), np.uint8)]
    results = predict(model, images, imgsz=64, cfg=PostprocessConfig(score_thr=0.0, max_per_img=5))
    assert [len(r["scores"]) for r in results] == [5, 5, 5]
    for image, result in zip(images, results):  # each in its own image's pixels
        assert (result["boxes_xyxy"][:, [0, 2]] <= image.shape[1]).all()
        assert (result["boxes_xyxy"][:, [1, 3]] <= image.shape[0]).all()


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_predict_under_no_grad_or_inference_mode_gives_the_same(mode):
    model = _model()
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    cfg = PostprocessConfig(score_thr=0.0)
    (plain,) = predict(model, image, imgsz=64, cfg=cfg)
    with mode():
        (inside,) = predict(model, image, imgsz=64, cfg=cfg)
    torch.testing.assert_close(inside["scores"], plain["scores"])
