"""detect_one_image on hand-made candidates: the map back to original pixels, the clamp, nms_pre."""
import pytest
import torch

from worldtune.model.postprocess import PostprocessConfig, detect_one_image


def test_boxes_map_back_through_letterbox_padding_and_per_axis_scale():
    # pad (top 10, bottom 10, left 4, right 4), scale (w 0.5, h 0.25): x = (x - 4) / 0.5, y = (y - 10) / 0.25,
    # so [20, 40, 60, 80] -> [32, 120, 112, 280]. Unequal pads and scales show any axis mix-up.
    det = detect_one_image(torch.tensor([[20.0, 40.0, 60.0, 80.0]]), torch.tensor([[0.9]]), PostprocessConfig(),
                           scale_factor=(0.5, 0.25), pad_param=(10, 10, 4, 4))
    torch.testing.assert_close(det["boxes_xyxy"], torch.tensor([[32.0, 120.0, 112.0, 280.0]]))
    assert det["labels"].tolist() == [0]


def test_boxes_are_clamped_to_the_original_width_and_height():
    # ori_shape is (h 100, w 300): x clamps to [0, 300] and y to [0, 100], so 250 stays and 150 -> 100;
    # every coordinate is clamped on its own, so a box below the image flattens onto its bottom edge.
    boxes = torch.tensor([[50.0, 20.0, 320.0, 150.0], [-5.0, -3.0, 40.0, 90.0], [200.0, 120.0, 260.0, 160.0]])
    # (IoU of the first and third is 1800 / 35700 = 0.05, under the 0.7 NMS threshold: all three survive)
    det = detect_one_image(boxes, torch.tensor([[0.9], [0.8], [0.7]]), PostprocessConfig(), ori_shape=(100, 300))
    torch.testing.assert_close(det["boxes_xyxy"], torch.tensor([[50.0, 20.0, 300.0, 100.0], [0.0, 0.0, 40.0, 90.0],
                                                                [200.0, 100.0, 260.0, 100.0]]))
    det = detect_one_image(torch.tensor([[50.0, 20.0, 250.0, 150.0]]), torch.tensor([[0.9]]), PostprocessConfig(),
                           ori_shape=(100, 300))
    torch.testing.assert_close(det["boxes_xyxy"], torch.tensor([[50.0, 20.0, 250.0, 100.0]]))


def test_nms_pre_keeps_the_highest_scoring_candidates():
    # Three disjoint boxes (NMS removes none) scored 0.9, 0.1, 0.8: the best two are kept, best first.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [40.0, 0.0, 50.0, 10.0]])
    det = detect_one_image(boxes, torch.tensor([[0.9], [0.1], [0.8]]), PostprocessConfig(nms_pre=2))
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.8]))
    torch.testing.assert_close(det["boxes_xyxy"], boxes[[0, 2]])


def test_prediction_creates_no_tensor_on_the_default_device(monkeypatch):
    """As the criterion's test: a tensor made without device= would be on the CPU next to CUDA ones on a
    GPU; here it lands on 'meta' next to CPU ones and fails the same way (decoding, box mapping)."""
    import torchvision

    from worldtune.model import build_model
    from worldtune.model.predict import predict_batch

    real_nms = torchvision.ops.batched_nms

    def nms_as_on_a_gpu(*args):  # torchvision's own host scalar, which it moves to the boxes' device
        with torch.device("cpu"):
            return real_nms(*args)

    monkeypatch.setattr(torchvision.ops, "batched_nms", nms_as_on_a_gpu)
    torch.manual_seed(0)
    model = build_model("n", num_classes=2).eval()
    model.set_vocabulary(["cat", "dog"], torch.nn.functional.normalize(torch.randn(2, 512), dim=-1))
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.device("meta"):
        dets = predict_batch(model, images, [(0.5, 0.5)], [(0, 0, 0, 0)], [(128, 128)],
                             PostprocessConfig(score_thr=0.0))
    assert len(dets[0]["scores"]) > 0 and dets[0]["boxes_xyxy"].device.type == "cpu"


def test_default_config_is_the_official_test_cfg_in_behaviour():
    """score_thr 0.001 (strictly above), IoU 0.7: 0.002 is a candidate, 0.0005 is not; boxes [0,0,10,10]
    and [0,0,10,h] have IoU 10/h, so h = 14 (0.714) is suppressed and h = 15 (0.667) survives."""
    far = [100.0, 100.0, 110.0, 110.0]
    det = detect_one_image(torch.tensor([[0.0, 0.0, 10.0, 10.0], far]), torch.tensor([[0.002], [0.0005]]),
                           PostprocessConfig())
    torch.testing.assert_close(det["scores"], torch.tensor([0.002]))
    for h, kept in ((14.0, 1), (15.0, 2)):
        det = detect_one_image(torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, h]]),
                               torch.tensor([[0.9], [0.8]]), PostprocessConfig())
        assert len(det["scores"]) == kept, h


def test_score_at_the_threshold_is_dropped_and_max_per_img_caps_after_nms():
    # 0.5 equals score_thr (exact in float32) and is not a candidate. Of the rest, the box at 0.8 overlaps
    # the 0.9 one (IoU 1) and goes in NMS, so max_per_img=2 keeps 0.9 and 0.7, not 0.9 and 0.8.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0],
                          [40.0, 0.0, 50.0, 10.0], [60.0, 0.0, 70.0, 10.0]])
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.6], [0.5]])
    det = detect_one_image(boxes, scores, PostprocessConfig(score_thr=0.5, max_per_img=2))
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.7]))
    det = detect_one_image(boxes, scores, PostprocessConfig(score_thr=0.5))
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.7, 0.6]))


def test_multi_label_prior_gives_one_detection_per_class_above_the_threshold():
    # One prior scoring 0.6 for class 0 and 0.9 for class 2: two detections with the same box, best first.
    det = detect_one_image(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[0.6, 0.0001, 0.9]]),
                           PostprocessConfig())
    assert det["labels"].tolist() == [2, 0]
    torch.testing.assert_close(det["boxes_xyxy"], torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2))


@pytest.mark.parametrize("field,value", [("score_thr", 25), ("score_thr", -0.1), ("score_thr", float("nan")),
                                         ("iou_thr", 1.01), ("iou_thr", "0.7"), ("max_per_img", 0),
                                         ("max_per_img", -1), ("max_per_img", 2.0), ("nms_pre", True)])
def test_out_of_range_settings_are_refused_in_one_line(field, value):
    # score_thr=25 kept nothing, max_per_img=-1 silently dropped the last box ([:-1])
    with pytest.raises(ValueError, match=f"PostprocessConfig.{field} must be"):
        PostprocessConfig(**{field: value})


def test_boundary_settings_are_accepted():
    assert PostprocessConfig(score_thr=0, iou_thr=1.0, nms_pre=1, max_per_img=1).max_per_img == 1
