"""Loss-test fixtures: the official train-mode loss entry of parity_s.pt, loaded once."""
import pytest
import torch


@pytest.fixture(scope="session")
def parity_s(spec_fixtures):
    """The whole parity_s.pt dict (weights stored fp16; see the fixture README)."""
    return torch.load(spec_fixtures / "parity_s.pt", weights_only=True)


@pytest.fixture(scope="session")
def loss_fixture(parity_s):
    return parity_s["loss"]
