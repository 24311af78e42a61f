import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from worldtune.data.coco import CocoDetection, DataError


def _copy_set(tiny_coco, tmp_path, edit=None):
    """Copy the tiny set to tmp_path, apply `edit(json_dict)` and return (ann_file, image_dir)."""
    image_dir = tmp_path / "images"
    shutil.copytree(tiny_coco["image_dir"], image_dir)
    data = json.loads(tiny_coco["ann_file"].read_text())
    if edit:
        edit(data)
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(data))
    return ann_file, image_dir


def test_category_mapping_and_texts(tiny_coco, tiny_dataset):
    ds = tiny_dataset
    assert ds.cat_ids == [1, 3, 4, 9, 17]
    assert ds.num_classes == 5 and ds.class_names == tiny_coco["category_names"]
    assert ds.class_texts[0] == ["red", "red thing"]
    data = json.loads(tiny_coco["ann_file"].read_text())
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for i, image_id in enumerate(ds.image_ids):
        rec = ds.get_record(i)
        anns = by_image.get(image_id, [])
        assert [ds.cat_ids[label] for label in rec["labels"]] == [a["category_id"] for a in anns]
        assert rec["ann_ids"].tolist() == [a["id"] for a in anns]


def test_crowd_rle_and_multipart(tiny_dataset):
    ds = tiny_dataset
    rec0 = ds.get_record(0)
    assert [len(p) for p in rec0["polygons"]] == [1, 1, 1]  # the third instance's two parts are merged
    ann = next(a for a in json.loads(ds.ann_file.read_text())["annotations"] if a["id"] == rec0["ann_ids"][2])
    assert len(ann["segmentation"]) == 2
    assert len(rec0["polygons"][2][0]) == sum(len(s) // 2 + 1 for s in ann["segmentation"])
    rec1 = ds.get_record(1)
    rle_parts = rec1["polygons"][1]  # non-crowd RLE -> traced contour close to the box
    xy = np.concatenate(rle_parts)
    np.testing.assert_allclose(np.concatenate([xy.min(0), xy.max(0)]), rec1["bboxes"][1], atol=1.5)
    rec2 = ds.get_record(2)  # grayscale image, one crowd instance
    assert rec2["ignore"].tolist() == [True] and rec2["polygons"] == [[]]
    assert ds.load_image(2).shape[2] == 3
    assert len(ds.get_record(3)["labels"]) == 0  # empty image kept (filter_empty_gt False)


def test_categories_with_the_same_text_are_reported(tiny_coco, tmp_path):
    def edit(d):
        d["categories"][3]["name"] = d["categories"][1]["name"]
    ann, img = _copy_set(tiny_coco, tmp_path, edit)
    name = json.loads(tiny_coco["ann_file"].read_text())["categories"][1]["name"]
    with pytest.warns(UserWarning, match=rf"share a text.*'{name}': category ids \[3, 9\]"):
        CocoDetection(ann, img)


def test_derived_texts_and_degenerate_ignored(tiny_coco, tmp_path):
    def edit(d):
        d["annotations"][0]["bbox"][2] = 0.5  # w < 1: kept but ignored
    ann, img = _copy_set(tiny_coco, tmp_path, edit)
    ds = CocoDetection(ann, img)
    assert ds.class_texts == [[n] for n in tiny_coco["category_names"]]
    assert ds.get_record(0)["ignore"].tolist() == [True, False, False]


@pytest.mark.parametrize("side", [2, 3])
def test_boxes_under_one_pixel_wide_or_high_are_ignored(tiny_coco, tmp_path, side):
    def edit(d):
        d["annotations"][0]["bbox"][side] = 0.5  # w (2) or h (3) < 1; the stored area stays positive
    ann, img = _copy_set(tiny_coco, tmp_path, edit)
    assert CocoDetection(ann, img).get_record(0)["ignore"].tolist() == [True, False, False]


def test_labels_follow_sorted_category_ids_whatever_the_listing_order(tiny_coco, tiny_dataset, tmp_path):
    # worldtune numbers classes by sorted category id (the official loader follows the file's listing
    # order, the same for COCO; README "What differs"): listing the categories in reverse
    # (17, 9, 4, 3, 1) must give the same ids, names and labels as the sorted file.
    def edit(d):
        d["categories"].reverse()
    ann, img = _copy_set(tiny_coco, tmp_path, edit)
    assert [c["id"] for c in json.loads(ann.read_text())["categories"]] == [17, 9, 4, 3, 1]
    ds = CocoDetection(ann, img)
    assert ds.cat_ids == [1, 3, 4, 9, 17] and ds.cat_id_to_label[1] == 0 and ds.cat_id_to_label[17] == 4
    assert ds.class_names == tiny_coco["category_names"]
    for i in range(len(ds)):
        assert ds.get_record(i)["labels"].tolist() == tiny_dataset.get_record(i)["labels"].tolist()


def test_class_text_count_mismatch(tiny_coco, tmp_path):
    bad = tmp_path / "texts.json"
    bad.write_text(json.dumps([["a"], ["b"], ["c"], ["d"]]))
    with pytest.raises(DataError, match=r"(?s)texts.json has 4 entries.*5 categories.*cyan"):
        CocoDetection(tiny_coco["ann_file"], tiny_coco["image_dir"], bad)


@pytest.mark.parametrize("edit, pattern", [
    (lambda d: d["annotations"][1].update(category_id=99), r"annotation id 103: unknown category_id 99"),
    (lambda d: d["annotations"][2].update(bbox=[5, 5, -3, 10]), r"annotation id 106: bbox .* negative size"),
    (lambda d: d["images"][0].update(file_name="nope.jpg"), r"nope.jpg does not exist"),
    (lambda d: d.update(images=[], annotations=[]), r"dataset is empty"),
    (lambda d: d["images"][1].update(id=d["images"][0]["id"]), r"image id \d+ is used twice"),
    (lambda d: d["annotations"][0].update(segmentation={"counts": "abc"}), r"annotation id 100: segmentation must"),
    (lambda d: d["annotations"][0].update(segmentation=[1, 2, 3]), r"annotation id 100: segmentation must"),
    (lambda d: d["annotations"][0].pop("bbox"), r"annotation id 100: lacks field\(s\) \['bbox'\]"),
    (lambda d: d["annotations"][0].update(image_id=None), r"annotation id 100: image_id must be an integer"),
    (lambda d: d["annotations"][0].update(bbox=[1, 1, float("nan"), 4]), r"annotation id 100: bbox must be 4 finite"),
])
def test_bad_data_messages(tiny_coco, tmp_path, edit, pattern):
    ann, img = _copy_set(tiny_coco, tmp_path, edit)
    with pytest.raises(DataError, match=pattern) as info:
        CocoDetection(ann, img)
    assert "ann.json" in str(info.value)


def test_malformed_json(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError, match="broken.json: malformed JSON"):
        CocoDetection(bad, tmp_path)


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_missing_image_folder_is_named_once(tiny_coco, tmp_path, policy):
    # a wrong --data-root layout (no val2017/) names the folder, not its first image, and 'skip'
    # does not turn it into "dataset is empty"
    with pytest.raises(DataError, match=r"image folder .*val2017 does not exist \(the images of .*annotations.json\)"):
        CocoDetection(tiny_coco["ann_file"], tmp_path / "val2017", on_bad_data=policy)


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_an_image_folder_holding_none_of_the_images_is_named(tiny_coco, tmp_path, policy):
    # the wrong folder exists (e.g. the val folder given for train): its first image was named, with a
    # hint to skip it, which would have dropped every image
    with pytest.raises(DataError, match=rf"image folder {tmp_path} holds none of the 8 images of "
                                        rf".*annotations.json \(e.g. .*img_000.jpg does not exist\): is it the right"):
        CocoDetection(tiny_coco["ann_file"], tmp_path, on_bad_data=policy)
    (tmp_path / "img_004.jpg").write_bytes(Path(tiny_coco["image_dir"], "img_004.jpg").read_bytes())
    with pytest.raises(DataError, match=r"image id 1000: file .*img_000.jpg does not exist \(--on-bad-data skip"):
        CocoDetection(tiny_coco["ann_file"], tmp_path, on_bad_data="error")  # one image there: the usual report


def test_skip_policy_counts(tiny_coco, tmp_path):
    def edit(d):
        d["annotations"][0]["category_id"] = 99
        d["annotations"][3]["bbox"] = [1, 1, -2, 4]
        d["images"][4]["file_name"] = "missing.png"
    ann, img = _copy_set(tiny_coco, tmp_path, edit)
    with pytest.warns(UserWarning, match="skipped") as record:
        ds = CocoDetection(ann, img, on_bad_data="skip")
    assert len(record) == 1  # reported once
    assert ds.skipped == {"bad annotation": 2, "missing image": 1}
    assert len(ds) == 7 and ds.get_record(0)["ann_ids"].tolist() == [103, 106]


def test_records_carry_one_merged_polygon_per_instance(tmp_path):
    ann = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 64}],
           "categories": [{"id": 1, "name": "thing"}],
           "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [2, 2, 40, 20], "area": 200,
                            "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10], [30, 12, 42, 12, 42, 22, 30, 22]]}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((64, 64, 3), np.uint8))
    rec = CocoDetection(tmp_path / "ann.json", tmp_path).get_record(0)
    (parts,) = rec["polygons"]
    assert len(parts) == 1 and len(parts[0]) == 5 + 5
    np.testing.assert_array_equal(np.concatenate([parts[0].min(0), parts[0].max(0)]), [2, 2, 42, 22])


def test_null_polygon_values_drop_the_part_not_the_box(tiny_coco, tmp_path):
    def edit(d):
        first = d["annotations"][0]
        first["segmentation"] = [[None if i == 0 else v for i, v in enumerate(first["segmentation"][0])]]
    ann, img = _copy_set(tiny_coco, tmp_path, edit)
    record = CocoDetection(ann, img).get_record(0)
    assert record["polygons"][0] == [] and np.isfinite(record["bboxes"]).all()  # mask-refine falls back to the box


def test_a_set_without_trainable_instances_is_refused(tiny_coco, tmp_path):
    from worldtune.data.presets import build_train_dataset

    ann, img = _copy_set(tiny_coco, tmp_path, lambda d: [a.update(iscrowd=1) for a in d["annotations"]])
    dataset = CocoDetection(ann, img)
    assert dataset.num_trainable == 0
    with pytest.raises(DataError, match="no trainable instance: every annotation .* or outside its image"):
        build_train_dataset(dataset, imgsz=64, num_texts=8)


@pytest.mark.parametrize("annotations", ["missing", "empty"])
def test_a_set_without_any_annotation_is_refused_as_such(tiny_coco, tmp_path, annotations):
    """An image list without labels (a test-set export, or the wrong file) is told as that, not as
    annotations that are all crowd or degenerate."""
    from worldtune.data.presets import build_train_dataset

    def edit(d):
        if annotations == "missing":
            del d["annotations"]
        else:
            d["annotations"] = []

    ann, img = _copy_set(tiny_coco, tmp_path, edit)
    dataset = CocoDetection(ann, img)
    assert dataset.num_annotations == 0
    with pytest.raises(DataError, match=rf"{ann}: no trainable instance: none of its {len(dataset)} images has an "
                                        r"annotation \(its 'annotations' list is missing, empty"):
        build_train_dataset(dataset, imgsz=64, num_texts=8)


def test_annotations_flagged_ignore_are_not_trained_on(tiny_coco, tmp_path):
    # mmdet's CocoDataset skips an annotation whose 'ignore' field is truthy (CrowdHuman-style
    # conversions mark regions so), so it never reaches the training pipeline.
    def edit(d):
        d["annotations"][1]["ignore"] = 1
        d["annotations"][2]["ignore"] = False
    ann, img = _copy_set(tiny_coco, tmp_path, edit)
    dataset = CocoDetection(ann, img)
    plain = CocoDetection(tiny_coco["ann_file"], tiny_coco["image_dir"])
    data = json.loads(Path(ann).read_text())
    flagged, kept = data["annotations"][1]["id"], data["annotations"][2]["id"]
    flags = {}
    for i in range(len(dataset)):
        record = dataset.get_record(i)
        flags.update(zip(record["ann_ids"].tolist(), record["ignore"].tolist()))
    assert flags[flagged] and not flags[kept]
    assert dataset.num_trainable == plain.num_trainable - 1


def test_boxes_outside_their_image_are_ignored_for_training_not_refused(tiny_coco, tmp_path):
    def move_out(d):  # the official loader skips a box whose overlap with its image has no area
        first = d["images"][0]
        d["annotations"].append(dict(d["annotations"][0], id=901, image_id=first["id"],
                                     bbox=[first["width"], 5.0, 10.0, 10.0]))  # touches the right edge
        d["annotations"].append(dict(d["annotations"][0], id=902, image_id=first["id"],
                                     bbox=[-20.0, 5.0, 20.5, 10.0]))  # overlaps by half a pixel: kept
    ann, img = _copy_set(tiny_coco, tmp_path, move_out)
    dataset = CocoDetection(ann, img)  # on_bad_data="error": nothing to report
    index = dataset.image_ids.index(json.loads(Path(ann).read_text())["images"][0]["id"])
    record = dataset.get_record(index)
    flags = dict(zip(record["ann_ids"].tolist(), record["ignore"].tolist()))
    assert flags[901] and not flags[902]


def test_files_that_are_not_pictures_are_found_without_decoding(tiny_coco, tmp_path):
    ann, img = _copy_set(tiny_coco, tmp_path)
    dataset = CocoDetection(ann, img)
    assert dataset.image_file_problems()["not_pictures"] == (0, [])  # the generated JPEG / PNG files
    dataset.image_path(1).write_text("<html>404 not found</html>")
    dataset.image_path(3).write_bytes(b"")
    count, first = dataset.image_file_problems(limit=1)["not_pictures"]
    assert count == 2 and first == [str(dataset.image_path(1))]


def test_jpegs_cut_short_are_found_and_warned_about(tiny_coco, tmp_path):
    from worldtune.data.image_files import jpeg_cut_short

    ann, img = _copy_set(tiny_coco, tmp_path)
    dataset = CocoDetection(ann, img)
    jpegs = [i for i in range(len(dataset)) if dataset.image_path(i).suffix == ".jpg"]
    assert dataset.image_file_problems()["cut_short"] == (0, [])
    path = dataset.image_path(jpegs[0])
    data = path.read_bytes()
    path.write_bytes(data + b"\x00" * 16)  # padding after the end marker is fine
    assert not jpeg_cut_short(path)
    path.write_bytes(data[: len(data) * 2 // 3])  # a download cut short: OpenCV still decodes it
    assert dataset.image_file_problems()["cut_short"] == (1, [str(path)])
    with pytest.warns(UserWarning, match="is cut short"):
        assert dataset.load_image(jpegs[0]) is not None
    assert not jpeg_cut_short(tmp_path / "missing.jpg")


def test_jpegs_cut_short_found_before_evaluation_are_not_warned_about_again_at_decode(tiny_coco, tmp_path):
    import warnings

    from worldtune.data.coco import warn_image_file_problems

    ann, img = _copy_set(tiny_coco, tmp_path)
    dataset = CocoDetection(ann, img)
    jpeg = next(i for i in range(len(dataset)) if dataset.image_path(i).suffix == ".jpg")
    data = dataset.image_path(jpeg).read_bytes()
    dataset.image_path(jpeg).write_bytes(data[: len(data) * 2 // 3])
    with pytest.warns(UserWarning, match=r"1 validation JPEG file\(s\) are cut short"):
        warn_image_file_problems(dataset, "the evaluation")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dataset.load_image(jpeg) is not None


def test_an_image_whose_size_differs_from_the_annotation_is_reported(tiny_coco, tmp_path):
    ann, img = _copy_set(tiny_coco, tmp_path)
    dataset = CocoDetection(ann, img)
    path = dataset.image_path(0)
    cv2.imwrite(str(path), np.zeros((dataset.image_size(0)[1], dataset.image_size(0)[0], 3), np.uint8))  # rotated
    with pytest.warns(UserWarning, match=r"decoded \d+x\d+, but .*ann.json says .*EXIF rotation"):
        dataset.load_image(0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset.load_image(0)  # said once per image
        dataset.load_image(1)  # the others match
    # another size than the sides swapped (an image resized after annotation): no guess of a rotation
    h, w = dataset.image_size(1)
    cv2.imwrite(str(dataset.image_path(1)), np.zeros((h, w + 30, 3), np.uint8))
    with pytest.warns(UserWarning, match=rf"decoded {w + 30}x{h}, but .*ann.json says {w}x{h}; its boxes are used"):
        dataset.load_image(1)


def _tag_orientation(path, orientation=6):
    """Re-save a JPEG with EXIF `orientation` (6: shown rotated 90 degrees clockwise), pixels as stored."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes(), quality=95)


def _marked_jpeg(path, orientation, h=40, w=60):
    """An h x w JPEG, white and red corners set apart so that every turn and mirror differs, tagged
    with EXIF `orientation` (None: no EXIF)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:5, :10] = 255
    img[-4:, -20:] = (0, 0, 255)
    cv2.imwrite(str(path), img)
    if orientation is not None:
        _tag_orientation(path, orientation)


@pytest.mark.parametrize("annotated", ["stored", "turned"])
@pytest.mark.parametrize("orientation", [None, *range(1, 9)])
def test_a_jpeg_is_decoded_once_in_the_frame_its_annotation_gives(tmp_path, monkeypatch, orientation, annotated):
    from worldtune.data import image_files

    path = tmp_path / "a.jpg"
    _marked_jpeg(path, orientation)
    stored = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    turned = cv2.imread(str(path), cv2.IMREAD_COLOR)
    quarter = orientation in (5, 6, 7, 8)
    expected_hw = (60, 40) if annotated == "turned" and quarter else (40, 60)
    decodes, imread = [], cv2.imread
    monkeypatch.setattr(image_files.cv2, "imread", lambda *args: decodes.append(args) or imread(*args))
    img = image_files.read_image_bgr(path, expected_hw)
    assert len(decodes) == 1
    np.testing.assert_array_equal(img, stored if quarter and annotated == "stored" else turned)


@pytest.mark.parametrize("name,orientation,size,expected_hw,frame", [
    ("a.jpg", 6, 40, (40, 40), "turned"),  # square: the sizes cannot tell, OpenCV's frame is kept
    ("a.png", 6, 60, (40, 60), "stored"),  # another format: decoded again without the turn
    ("a.png", 6, 60, (60, 40), "turned"),
    ("a.png", 6, 40, (40, 40), "turned"),
    ("a.png", 2, 60, (60, 40), "turned"),  # a mirror does not explain swapped sizes: OpenCV's frame is kept
])
def test_an_image_is_read_as_stored_only_where_its_annotation_gives_the_stored_quarter_turn(
        tmp_path, name, orientation, size, expected_hw, frame):
    from worldtune.data import image_files

    path = tmp_path / name
    _marked_jpeg(path, orientation, h=40, w=size)  # PIL writes the EXIF block of a PNG too (eXIf)
    stored = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    turned = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert stored.shape != turned.shape or (stored != turned).any()  # OpenCV applies the orientation
    np.testing.assert_array_equal(image_files.read_image_bgr(path, expected_hw), {"stored": stored,
                                                                                   "turned": turned}[frame])


def test_small_jpegs_webp_and_folders_are_told_apart_without_decoding(tmp_path):
    from worldtune.data.image_files import image_file_problem

    (tmp_path / "tiny.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(20) + b"\xff\xd9")  # under 64 bytes
    (tmp_path / "tiny_cut.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(20))
    cv2.imwrite(str(tmp_path / "a.webp"), np.zeros((4, 6, 3), np.uint8))
    (tmp_path / "folder.jpg").mkdir()
    assert [image_file_problem(tmp_path / n) for n in ("tiny.jpg", "tiny_cut.jpg", "a.webp", "folder.jpg")] == [
        None, "cut_short", None, "not_pictures"]


@pytest.mark.parametrize("annotated", ["stored", "rotated"])
def test_exif_rotated_images_are_read_in_the_frame_their_annotation_gives(tiny_coco, tmp_path, annotated):
    # Tools built on pycocotools show the stored pixels; others apply the EXIF rotation. The annotation's
    # width and height say which: a 90-degree rotation must not move the boxes off their objects.
    def swap(d):
        if annotated == "rotated":
            d["images"][0]["width"], d["images"][0]["height"] = d["images"][0]["height"], d["images"][0]["width"]
    ann, img = _copy_set(tiny_coco, tmp_path, swap)
    dataset = CocoDetection(ann, img)
    path = dataset.image_path(0)
    assert path.suffix == ".jpg"
    _tag_orientation(path)
    stored = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    shown = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert shown.shape[:2] == stored.shape[:2][::-1]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no size-mismatch warning: the pixels fit the annotation
        loaded = dataset.load_image(0)
    assert loaded.shape[:2] == dataset.image_size(0)
    np.testing.assert_array_equal(loaded, stored if annotated == "stored" else shown)


@pytest.mark.parametrize("orientation,square,noted", [
    (None, False, False), (1, False, False), (6, False, False),  # no turn, or the sizes tell the frame
    (3, False, True), (2, False, True), (6, True, True),  # a half turn, a mirror, a square's quarter turn
])
def test_an_exif_orientation_the_sizes_cannot_confirm_is_noted_once(tiny_coco, tmp_path, orientation, square, noted):
    import warnings

    side = 120

    def resize(d):
        if square:
            d["images"][0]["width"] = side
    ann, img = _copy_set(tiny_coco, tmp_path, resize)
    dataset = CocoDetection(ann, img)
    h, w = dataset.image_size(0)
    assert dataset.image_path(0).suffix == ".jpg" and h == side
    _marked_jpeg(dataset.image_path(0), orientation, h, w)
    _marked_jpeg(dataset.image_path(3), orientation, *dataset.image_size(3))  # the other JPEG
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        for index in (0, 3, 0, 1):
            assert dataset.load_image(index).shape[:2] == dataset.image_size(index)
    notes = [str(w.message) for w in shown if "EXIF orientation" in str(w.message)]
    assert len(notes) == (1 if noted else 0) and len(shown) == len(notes), [str(w.message) for w in shown]
    assert all(note.startswith(f"{ann}: ") for note in notes)


def test_file_names_written_with_windows_separators_are_found(tiny_coco, tmp_path):
    def to_windows(d):
        d["images"][0]["file_name"] = "day 1\\" + d["images"][0]["file_name"]
    ann, img = _copy_set(tiny_coco, tmp_path, to_windows)
    name = json.loads(ann.read_text())["images"][0]["file_name"].split("\\")[1]
    (img / "day 1").mkdir()
    (img / name).rename(img / "day 1" / name)
    dataset = CocoDetection(ann, img)
    assert dataset.image_path(0) == img / "day 1" / name
    assert dataset.load_image(0).shape[:2] == dataset.image_size(0)


def test_images_under_min_size_are_counted(tiny_coco, tmp_path):
    ann, img = _copy_set(tiny_coco, tmp_path, lambda d: d["images"].append(dict(d["images"][0], id=999, width=20)))
    with pytest.warns(UserWarning, match=r"1 image\(s\) with a side under min_size=32 px left out"):
        dataset = CocoDetection(ann, img)
    assert len(dataset) == 8 and 999 not in dataset.image_ids


def test_whole_float_ids_read_as_the_ints(tiny_coco, tmp_path):
    """Files written through numpy carry ids as 9.0: the set is the one the int ids give, with int ids
    throughout (what the detections written from it carry)."""
    def as_floats(d):
        for entry in d["images"] + d["categories"]:
            entry["id"] = float(entry["id"])
        for a in d["annotations"]:
            a.update(id=float(a["id"]), image_id=float(a["image_id"]), category_id=float(a["category_id"]))

    ints = CocoDetection(tiny_coco["ann_file"], tiny_coco["image_dir"])
    ann, img = _copy_set(tiny_coco, tmp_path, as_floats)
    assert '"id": 1000.0' in ann.read_text()
    floats = CocoDetection(ann, img)
    assert floats.cat_ids == ints.cat_ids and floats.cat_id_to_label == ints.cat_id_to_label
    assert floats.image_ids == ints.image_ids and all(type(i) is int for i in floats.image_ids + floats.cat_ids)
    assert (floats.num_annotations, floats.num_trainable) == (ints.num_annotations, ints.num_trainable)
    for index in range(len(ints)):
        a, b = floats.get_record(index), ints.get_record(index)
        assert type(a["image_id"]) is int and a["image_id"] == b["image_id"]
        for key in ("ann_ids", "bboxes", "labels", "ignore"):
            np.testing.assert_array_equal(a[key], b[key])
        assert len(a["polygons"]) == len(b["polygons"])


def _rle(counts, size=(120, 160)):
    return {"size": list(size), "counts": counts}


@pytest.mark.parametrize("edit, pattern", [
    (lambda d: d["images"][0].update(id="1000"), r"image 'img_000.jpg' \(entry 0 of 'images'\): 'id' must be an "
                                                 r"integer, got '1000'"),
    # an export's extra fields: the message names the file, not a cut-short entry
    (lambda d: d["images"][2].update(id=1014.5, license=1, coco_url="http://example.com/" + "x" * 80),
     r"ann.json: image 'img_002.png' \(entry 2 of 'images'\): 'id' must be an integer, got 1014.5$"),
    (lambda d: d["images"][0].update(id=float("nan")), r"'id' must be an integer, got nan"),
    (lambda d: d["categories"][0].update(id=float("inf")), r"category \{.*\}: 'id' must be an integer, got inf"),
    (lambda d: d["annotations"][0].update(category_id=1.5), r"annotation id 100: category_id must be an integer, "
                                                            r"got 1.5"),
    # 1000.0 is the id 1000 (as pycocotools reads it): a second image 1000
    (lambda d: d["images"][1].update(id=1000.0), r"image id 1000 is used twice"),
    # 64-bit unsigned hashes as ids: an OverflowError traceback once a worker built the record
    (lambda d: d["images"][0].update(id=2**64 - 1), r"'id' 18446744073709551615 does not fit in a signed 64-bit"),
    (lambda d: d["annotations"][0].update(id=2**63), r"annotation id 9223372036854775808: id 9223372036854775808 does "
                                                     r"not fit in a signed 64-bit integer"),
    (lambda d: d["images"][0].update(file_name=5), r"image id 1000: 'file_name' must be a non-empty string"),
    (lambda d: d["images"][0].update(width="160"), r"image id 1000: 'width' must be a positive integer, got '160'"),
    (lambda d: d["images"][0].update(height=None), r"image id 1000: 'height' must be a positive integer"),
    (lambda d: d["images"].__setitem__(0, 7), r"an entry of the images must be an object, got 7"),
    (lambda d: d["categories"][0].update(id="1"), r"category \{.*\}: 'id' must be an integer, got '1'"),
    # `true` would pass for the id 1 (True == 1 in every look-up), silently
    (lambda d: d["categories"][0].update(id=True), r"category \{.*\}: 'id' must be an integer, got True"),
    (lambda d: d["categories"][0].update(name=""), r"category id 1: 'name' must be a non-empty string"),
    (lambda d: d["categories"][0].update(name=None), r"category id 1: 'name' must be a non-empty string"),
    (lambda d: d.update(categories=[], annotations=[]), r"'categories' is empty"),
    (lambda d: d.update(annotations={"a": 1}), r"'annotations' must be a list"),
    (lambda d: d["annotations"][0].update(id="x"), r"annotation id x: id must be an integer"),
    (lambda d: d["annotations"][0].update(iscrowd="yes"), r"annotation id 100: iscrowd must be 0 or 1"),
    (lambda d: d["annotations"][0].update(area="big"), r"annotation id 100: area must be a finite number"),
    (lambda d: d["annotations"][0].update(area=float("nan")), r"annotation id 100: area must be a finite number"),
    (lambda d: d["annotations"][0].update(segmentation=_rle(5)), r"annotation id 100: RLE .*'counts' must be"),
    (lambda d: d["annotations"][0].update(segmentation=_rle([0, 100000])), r"adding up to height x width = 19200"),
    (lambda d: d["annotations"][0].update(segmentation=_rle([-5, 3])), r"adding up to height x width"),
    (lambda d: d["annotations"][0].update(segmentation=_rle([0.5, 3])), r"adding up to height x width"),
    (lambda d: d["annotations"][0].update(segmentation=_rle([0, 100], (10, 10))),
     r"'size' \[10, 10\] is not the image's"),
    (lambda d: d["annotations"][0].update(segmentation=_rle("abc", ("a", "b"))),
     r"'size' \['a', 'b'\] is not the image's"),
])
def test_malformed_fields_are_named_not_tracebacks(tiny_coco, tmp_path, edit, pattern):
    # Before: TypeErrors deep in the loader or pycocotools, int() messages without a file, or
    # (string ids, an RLE of another size) a silently wrong set.
    ann, img = _copy_set(tiny_coco, tmp_path, edit)
    with pytest.raises(DataError, match=pattern) as info:
        CocoDetection(ann, img)
    assert "ann.json" in str(info.value)


def test_an_rle_that_cannot_be_decoded_is_named_when_the_pipeline_needs_it(tiny_coco, tmp_path):
    # decoded when a record is built (not for every mask at load): an error, or a box without polygon
    ann, img = _copy_set(tiny_coco, tmp_path, lambda d: d["annotations"][0].update(segmentation=_rle("!!!!")))
    dataset = CocoDetection(ann, img)
    index = dataset.image_ids.index(json.loads(ann.read_text())["annotations"][0]["image_id"])
    with pytest.raises(DataError, match=r"ann.json: annotation id 100 \(image id \d+\): RLE .*cannot be decoded"):
        dataset.get_record(index)
    with pytest.warns(UserWarning, match=r"annotation id 100 .* its box is used without a polygon"):
        record = CocoDetection(ann, img, on_bad_data="skip").get_record(index)
    assert record["polygons"][list(record["ann_ids"]).index(100)] == []


def test_a_folder_named_as_an_image_is_called_a_folder(tiny_coco, tmp_path):
    ann, img = _copy_set(tiny_coco, tmp_path, lambda d: d["images"][0].update(file_name="sub"))
    (img / "sub").mkdir()
    with pytest.raises(DataError, match=r"images/sub is a folder, not an image"):
        CocoDetection(ann, img)


def test_polygon_values_that_are_no_numbers_drop_the_part(tiny_coco, tmp_path):
    def edit(d):
        d["annotations"][0]["segmentation"] = [["a", 2, 30, 4, 30, 40], [8, 10, 60, 10, 60, 50, 8, 50]]
    ann, img = _copy_set(tiny_coco, tmp_path, edit)
    rec = CocoDetection(ann, img).get_record(0)
    assert [p.shape for p in rec["polygons"][0]] == [(4, 2)]
