"""Fast JSON reading with the json module as fallback."""
import json
import math

import pytest

from worldtune.jsonfile import load_json


def test_reads_what_the_json_module_reads(tmp_path):
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480}],
            "annotations": [{"id": 7, "bbox": [0.1, 2.25, 3e-7, 1e6], "segmentation": [[1.5, 2, 3, 4, 5, 6]]}],
            "text": "café ☕"}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert load_json(path) == data


def test_nan_written_by_python_still_loads_and_malformed_files_raise(tmp_path):
    nan_file = tmp_path / "results.json"
    nan_file.write_text(json.dumps([{"image_id": 1, "score": float("nan")}]))  # json writes NaN by default
    assert math.isnan(load_json(nan_file)[0]["score"])  # the checks downstream can then name it
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [1, 2,')
    with pytest.raises(json.JSONDecodeError):
        load_json(bad)


def test_id_problem_accepts_signed_64_bit_integers_only():
    """COCO ids are held as int64 by numpy and the COCO tools; a bool (`true` in the file) would pass
    for the id 1 and match another entry's 1."""
    import numpy as np

    from worldtune.jsonfile import id_problem

    for good in (0, 7, -5, -2**63, 2**63 - 1, np.int64(3)):
        assert id_problem(good) == "", good
    assert id_problem(True) == "must be an integer, got True"
    assert id_problem("3") == "must be an integer, got '3'"
    for outside in (2**63, -2**63 - 1, 2**64 - 1):
        assert id_problem(outside).startswith(f"{outside} does not fit in a signed 64-bit integer")
