"""Fixtures for the data tests: one generated tiny COCO set per session (read-only)."""
import pytest

from tests.helpers.coco_factory import make_tiny_coco


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory) -> dict:
    return make_tiny_coco(tmp_path_factory.mktemp("tiny_coco"), num_images=8)


@pytest.fixture(scope="session")
def tiny_dataset(tiny_coco):
    from worldtune.data.coco import CocoDetection

    return CocoDetection(tiny_coco["ann_file"], tiny_coco["image_dir"], tiny_coco["class_texts_file"])
