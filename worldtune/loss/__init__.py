"""Training losses: task-aligned assignment and the official YOLO-World criterion."""
from worldtune.loss.assigner import AssignResult, TaskAlignedAssigner, pad_targets
from worldtune.loss.criterion import YOLOWorldCriterion, distribution_focal_loss, official_loss_scale

__all__ = ["AssignResult", "TaskAlignedAssigner", "YOLOWorldCriterion", "distribution_focal_loss",
           "official_loss_scale", "pad_targets"]
