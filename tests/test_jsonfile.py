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


def test_whole_float_ids_are_read_as_ints():
    """Tools that go through numpy write ids as 9.0; pycocotools takes them for 9 (9.0 == 9 as a dict
    key), so they are read as the int 9. Other floats, strings, bools, NaN and infinities stay refused."""
    from worldtune.jsonfile import as_id, id_problem

    for whole, read in ((9.0, 9), (-3.0, -3), (0.0, 0), (2.0**62, 2**62)):
        assert as_id(whole) == read and type(as_id(whole)) is int
        assert id_problem(whole) == "", whole
    assert as_id(9) == 9 and as_id("9") == "9" and as_id(True) is True  # no float: as given
    assert id_problem(9.5) == "must be an integer, got 9.5"
    assert id_problem(float("nan")) == "must be an integer, got nan"
    assert id_problem(float("inf")) == "must be an integer, got inf"
    assert id_problem(2.0**64).startswith("18446744073709551616 does not fit in a signed 64-bit integer")
