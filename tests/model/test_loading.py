"""Building ready-to-use models from checkpoints: variant recognition, official layout, mismatches."""
import pytest
import torch

from worldtune.model import VARIANTS, build_model
from worldtune.model.loading import infer_variant


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_is_recognised_from_weights(variant):
    with torch.device("meta"):
        state = build_model(variant).state_dict()
    assert infer_variant(state) == variant


def test_unrecognisable_weights_are_refused():
    with pytest.raises(ValueError, match="variant"):
        infer_variant({"foo": torch.zeros(1)})
