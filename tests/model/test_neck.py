"""The neck's text-guided attention as a run from random weights starts it."""
import torch

from worldtune.model.neck import MaxSigmoidAttnBlock


def test_attention_head_biases_start_at_zero():
    """Official MaxSigmoidAttnBlock: bias zeros(num_heads), so the first gate is sigmoid(best score)."""
    block = MaxSigmoidAttnBlock(in_channels=16, embed_channels=8, num_heads=2, guide_channels=4)
    assert torch.equal(block.bias.detach(), torch.zeros(2))
