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
