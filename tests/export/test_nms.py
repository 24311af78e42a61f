"""export.nms: in-graph post-processing, checked in PyTorch on a stand-in detector."""
import torch
from torch import nn

from worldtune.export.nms import DetectorWithNMS


class _Fixed(nn.Module):
    """Returns the same decoded boxes (B, N, 4) and scores (B, N, K) for any input."""

    def __init__(self, boxes, scores):
        super().__init__()
        self.boxes, self.scores = boxes, scores

    def forward(self, images, text_feats=None):
        return self.boxes, self.scores


def test_fewer_candidates_than_max_det_are_padded():
    """2 priors x 2 classes = 4 (box, class) pairs, max_det 10: the outputs still have 10 rows, the
    detections first by score, then padding (label -1, zero box)."""
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 70.0]]])
    scores = torch.tensor([[[0.9, 0.1], [0.3, 0.6]]])
    num, out_boxes, out_scores, labels = DetectorWithNMS(_Fixed(boxes, scores), score_thr=0.2, max_det=10)(
        torch.zeros(1, 3, 32, 32))
    assert num.tolist() == [3] and out_boxes.shape == (1, 10, 4) and labels.shape == (1, 10)
    assert torch.allclose(out_scores[0, :3], torch.tensor([0.9, 0.6, 0.3]))
    assert labels[0].tolist() == [0, 1, 0] + [-1] * 7
    assert torch.equal(out_boxes[0, :3], boxes[0, [0, 1, 1]]) and not out_boxes[0, 3:].any()


def _run(boxes, scores, **kw):
    return DetectorWithNMS(_Fixed(boxes, scores), **kw)(torch.zeros(boxes.shape[0], 3, 32, 32))


def test_each_image_keeps_its_own_detections_in_a_batch():
    """B=2, N=3 priors, K=2 classes (N != K, so a swapped flat index or prior/class split shows). Image 0
    has prior 2 / class 1 at 0.8; image 1 has prior 1 / class 0 at 0.7 and prior 0 / class 1 at 0.4."""
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [40.0, 40.0, 50.0, 50.0]],
                          [[1.0, 1.0, 11.0, 11.0], [21.0, 21.0, 31.0, 31.0], [41.0, 41.0, 51.0, 51.0]]])
    scores = torch.zeros(2, 3, 2)
    scores[0, 2, 1] = 0.8
    scores[1, 1, 0], scores[1, 0, 1] = 0.7, 0.4
    num, out_boxes, out_scores, labels = _run(boxes, scores, score_thr=0.25, max_det=3)
    assert num.tolist() == [1, 2]
    torch.testing.assert_close(out_scores, torch.tensor([[0.8, 0.0, 0.0], [0.7, 0.4, 0.0]]))
    assert labels.tolist() == [[1, -1, -1], [0, 1, -1]]
    torch.testing.assert_close(out_boxes[0, 0], boxes[0, 2])
    torch.testing.assert_close(out_boxes[1, :2], boxes[1, [1, 0]])


def test_score_exactly_at_the_threshold_is_not_a_candidate():
    # The official test_cfg keeps scores > score_thr (strictly); 0.25 and 0.5 are exact in float32.
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]])
    num, _, out_scores, _ = _run(boxes, torch.tensor([[[0.25], [0.5]]]), score_thr=0.25, max_det=5)
    assert num.tolist() == [1] and out_scores[0, 0].item() == 0.5


def test_max_det_keeps_the_best_boxes_over_all_classes():
    # Class 0 has two disjoint boxes at 0.9 and 0.8, class 1 one at 0.3: the best two are both class 0.
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [40.0, 40.0, 50.0, 50.0]]])
    scores = torch.tensor([[[0.9, 0.0], [0.8, 0.0], [0.0, 0.3]]])
    num, _, out_scores, labels = _run(boxes, scores, score_thr=0.1, max_det=2)
    assert num.tolist() == [2] and labels[0].tolist() == [0, 0]
    torch.testing.assert_close(out_scores[0], torch.tensor([0.9, 0.8]))


def test_default_iou_threshold_is_the_official_0_7():
    # [0, 0, 10, 10] against [0, 0, 10, h]: IoU = 10 / h. h = 14 gives 0.714 (> 0.7, suppressed) and
    # h = 15 gives 0.667 (kept); a class-aware NMS never suppresses across classes.
    for h, kept in ((14.0, 1), (15.0, 2)):
        boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, h]]])
        num, _, _, _ = _run(boxes, torch.tensor([[[0.9], [0.8]]]))
        assert num.tolist() == [kept], h
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]]])
    num, _, _, labels = _run(boxes, torch.tensor([[[0.9, 0.0], [0.0, 0.8]]]))
    assert num.tolist() == [2] and labels[0, :2].tolist() == [0, 1]
