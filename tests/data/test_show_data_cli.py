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
