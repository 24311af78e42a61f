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
