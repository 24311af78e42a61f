"""Shared test fixtures. Heavy builders live in tests/helpers/ and are cached per session."""
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEC_FIXTURES = REPO_ROOT.parent / "shared" / "spec" / "fixtures"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def spec_fixtures() -> Path:
    """The official-parity fixture folder (../shared/spec/fixtures).

    Under CI (CI=true) a missing folder is a failure; elsewhere the test is skipped.
    """
    if SPEC_FIXTURES.is_dir():
        return SPEC_FIXTURES
    if _in_ci():
        pytest.fail(f"CI=true but the spec fixtures folder {SPEC_FIXTURES} is missing")
    pytest.skip(f"official fixtures not found at {SPEC_FIXTURES} (they sit beside the repository in ../shared)")


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread: on 2 shared cores OpenMP spin-waits make small convs
    many times slower, and bitwise comparisons across processes need the same reduction order."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
