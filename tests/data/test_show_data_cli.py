import cv2

from worldtune.cli import main


def test_show_data_writes_grid(tiny_coco, tmp_path, capsys):
    out = tmp_path / "grid.png"
    rc = main(["show-data", "--ann", str(tiny_coco["ann_file"]), "--images", str(tiny_coco["image_dir"]),
               "--out", str(out), "--num", "3", "--cols", "2", "--imgsz", "64", "--num-texts", "8"])
    assert rc == 0 and "3 samples" in capsys.readouterr().out
    grid = cv2.imread(str(out))
    assert grid.shape[0] > 2 * 64 and grid.shape[1] == 2 * 64


def test_show_data_reports_bad_file(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("{")
    rc = main(["show-data", "--ann", str(bad), "--images", str(tmp_path), "--out", str(tmp_path / "g.png")])
    assert rc == 2 and "x.json: malformed JSON" in capsys.readouterr().err


def test_show_data_wants_a_picture_name(tiny_coco, tmp_path, capsys):
    rc = main(["show-data", "--ann", str(tiny_coco["ann_file"]), "--images", str(tiny_coco["image_dir"]),
               "--out", str(tmp_path / "grid"), "--num", "1"])
    assert rc == 2 and "name a picture file" in capsys.readouterr().err


def test_captions_break_between_words_and_say_when_cut():
    from worldtune.cli.show_data import caption

    assert caption(["space rocket", "cat face"], 20, 3) == ["2 texts: space", "rocket, cat face"]
    lines = caption([f"class {i}" for i in range(40)], 20, 2)
    assert len(lines) == 2 and lines[0] == "40 texts: class 0," and lines[1].endswith(" ...")
    assert all(len(line) <= 20 for line in lines)


def test_grid_places_tiles_row_major_and_pads_the_last_row_white():
    import numpy as np

    from worldtune.cli.show_data import make_grid

    tiles = [np.full((2, 3, 3), v, np.uint8) for v in (10, 20, 30)]
    grid = make_grid(tiles, cols=2)
    assert grid.shape == (4, 6, 3)
    assert grid[0, 0, 0] == 10 and grid[0, 3, 0] == 20 and grid[2, 0, 0] == 30 and (grid[2:, 3:] == 255).all()


def test_each_box_is_labelled_with_its_own_text(monkeypatch):
    import numpy as np

    from worldtune.cli import show_data

    drawn = []
    monkeypatch.setattr(show_data, "draw_label", lambda img, text, x, y, colour: drawn.append((text, x, y)))
    sample = {"img": np.zeros((40, 40, 3), np.uint8), "texts": ["cat", "dog", ""], "labels": np.array([1, 0]),
              "bboxes": np.array([[2, 3, 10, 12], [20, 21, 30, 33]], np.float32), "polygons": None}
    tile = show_data.draw_sample(sample)
    assert drawn == [("dog", 2, 3), ("cat", 20, 21)] and tile.shape[1] == 40


def test_show_data_refuses_a_non_positive_affine_scale(tiny_coco, tmp_path, capsys):
    rc = main(["show-data", "--ann", str(tiny_coco["ann_file"]), "--images", str(tiny_coco["image_dir"]),
               "--out", str(tmp_path / "g.png"), "--affine-scale", "0", "1.5"])
    assert rc == 2 and "--affine-scale wants MIN MAX with 0 < MIN <= MAX, got 0.0 1.5" in capsys.readouterr().err


def test_show_data_refuses_a_negative_seed(tiny_coco, tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):  # numpy's generators take no negative seed: told by argparse, naming it
        main(["show-data", "--ann", str(tiny_coco["ann_file"]), "--images", str(tiny_coco["image_dir"]),
              "--out", str(tmp_path / "g.png"), "--seed", "-1"])
    assert "--seed: must be 0 or more" in capsys.readouterr().err and not (tmp_path / "g.png").exists()
