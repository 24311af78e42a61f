import json
import warnings

import numpy as np
import pytest

from worldtune.data.coco import DataError
from worldtune.data.texts import load_class_texts, sample_texts


def test_sample_texts_keeps_label_text_correspondence():
    class_texts = [[f"class{i}", f"syn{i}"] for i in range(10)]
    labels = np.array([3, 7, 3, 1])
    rng = np.random.default_rng(0)
    texts, new_labels, keep = sample_texts(labels, class_texts, rng, num_texts=6)
    assert len(texts) == 6 and keep.all()
    for old, new in zip(labels, new_labels):
        assert texts[new] in class_texts[old]
    assert len(set(texts)) == 6  # positives + negatives, no duplicates, no padding needed


def test_sample_texts_pads_and_subsamples():
    class_texts = [[f"c{i}"] for i in range(3)]
    texts, labels, keep = sample_texts(np.array([2, 0]), class_texts, np.random.default_rng(1), num_texts=8)
    assert texts[3:] == [""] * 5 and sorted(texts[:3]) == ["c0", "c1", "c2"]
    many = [[f"c{i}"] for i in range(20)]
    labels = np.arange(20)
    texts, new_labels, keep = sample_texts(labels, many, np.random.default_rng(2), num_texts=5)
    assert len(texts) == 5 and keep.sum() == 5  # only 5 positive classes can be named
    assert [texts[n] for n in new_labels] == [f"c{i}" for i in labels[keep]]


def test_sample_texts_caps_negatives_at_num_neg():
    # 1 positive + at most num_neg=3 negatives = 4 real texts, although num_texts=10 and 19 other
    # classes would allow 9; the rest is padding.
    class_texts = [[f"c{i}"] for i in range(20)]
    texts, new_labels, keep = sample_texts(np.array([7, 7]), class_texts, np.random.default_rng(0),
                                           num_texts=10, num_neg=3)
    assert len(texts) == 10 and texts[4:] == [""] * 6
    assert len(set(texts[:4])) == 4 and "c7" in texts[:4]
    assert keep.all() and [texts[n] for n in new_labels] == ["c7", "c7"]


def test_coco_asset_has_80_names():
    from importlib.resources import files

    texts = json.loads(files("worldtune").joinpath("assets/coco_class_texts.json").read_text())
    assert len(texts) == 80 and texts[0] == ["person"] and texts[-1] == ["toothbrush"]
    assert all(len(t) == 1 for t in texts)


def test_load_class_texts_validation(tmp_path):
    assert load_class_texts(None, ["a", "b"]) == [["a"], ["b"]]
    with pytest.raises(DataError, match="entry 1 must be a non-empty list"):
        load_class_texts([["a"], []], ["a", "b"])
    with pytest.raises(DataError, match="entry 1 must be a non-empty list of non-empty strings"):
        load_class_texts([["a"], ["b", " "]], ["a", "b"])  # "" is the padding text
    bom = tmp_path / "bom.json"
    bom.write_bytes('[["a"], ["b"]]'.encode("utf-8-sig"))
    assert load_class_texts(bom, ["a", "b"]) == [["a"], ["b"]]
    bad = tmp_path / "t.json"
    bad.write_text("[[")
    with pytest.raises(DataError, match="t.json: malformed JSON"):
        load_class_texts(bad, ["a"])
    lines = tmp_path / "names.txt"  # one text per line, as `predict` takes them
    lines.write_text("# my classes\nred car\n\nperson\n")
    assert load_class_texts(lines, ["car", "person"]) == [["red car"], ["person"]]
    photo = tmp_path / "photo.json"  # a binary file by mistake
    photo.write_bytes(b"\xff\xd8\xff\xe0 JFIF")
    with pytest.raises(DataError, match="photo.json: not a UTF-8 text file"):
        load_class_texts(photo, ["a"])


def test_binary_or_folder_annotation_files_are_named(tmp_path):
    from worldtune.data.coco import CocoDetection

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0 JFIF")
    with pytest.raises(DataError, match=r"photo.jpg: malformed JSON \(not UTF-8 text"):
        CocoDetection(photo, tmp_path)
    with pytest.raises(DataError, match="is a folder, not a COCO JSON file"):
        CocoDetection(tmp_path, tmp_path)
    with pytest.raises(DataError, match="image folder .*photo.jpg is a file, not a folder"):
        CocoDetection(photo, photo)
    with pytest.raises(DataError, match="class-text file .* is a folder"):
        load_class_texts(tmp_path, ["a"])


def test_sample_texts_shuffles_positives_among_negatives():
    # Official RandomLoadText shuffles positives and negatives together before padding: the present
    # classes must not always take the first positions (and the '' padding always comes last).
    class_texts = [[f"c{i}"] for i in range(10)]
    positions = set()  # where the two positives land; 45 possible pairs
    for seed in range(20):
        texts, labels, _ = sample_texts(np.array([0, 1]), class_texts, np.random.default_rng(seed), num_texts=12)
        assert texts[10:] == ["", ""] and sorted(texts[:10]) == sorted(f"c{i}" for i in range(10))
        positions.add(tuple(sorted(labels.tolist())))
    assert len(positions) > 5  # unshuffled, they would always be (0, 1)


def test_class_texts_naming_the_categories_in_another_order_are_refused(tmp_path):
    # A file written in the annotation file's listing order (the official loader's numbering) for
    # categories listed out of id order: every class would silently be trained with another's text.
    names = ["cat", "person", "cup"]  # labels 0..2 = the categories sorted by id
    path = tmp_path / "texts.json"
    path.write_text(json.dumps([["person"], ["cup"], ["Cat", "kitty"]]))
    with pytest.raises(DataError, match=r"texts.json: the entries name the categories in another order.*"
                                        r"entry 0 is \['person'\] but category 0 is 'cat' \(entry 2\)"):
        load_class_texts(path, names)
    # the right order, texts that are not the names, and names shared by entries all pass
    assert load_class_texts([["Cat", "kitty"], ["person"], ["cup"]], names)[0] == ["Cat", "kitty"]
    assert load_class_texts([["tabby"], ["human"], ["mug"]], names) == [["tabby"], ["human"], ["mug"]]
    assert load_class_texts([["cat"], ["cat person"], ["cup", "person"]], names)[2] == ["cup", "person"]


def test_class_texts_whose_names_are_shared_by_entries_are_not_judged_misordered():
    """Only a clear case is refused: a name that two entries hold says nothing of the order (here
    "person" is a synonym of entries 0 and 1, so entry 1's "cat" need not be category 1's)."""
    names = ["cat", "person", "cup"]
    texts = [["person"], ["cat", "person"], ["cup"]]
    assert load_class_texts(texts, names) == texts


def test_a_misordered_entry_that_repeats_its_name_is_refused_and_long_lists_are_cut():
    names = ["cat", "person", "cup"]
    with pytest.raises(DataError, match=r"entry 0 is \['person'\] but category 0 is 'cat' \(entry 2\)"):
        load_class_texts([["person"], ["cup"], ["Cat", "cat"]], names)  # one entry, the name twice
    names = [f"class {i}" for i in range(4)]
    with pytest.raises(DataError, match=r"\(entry 1\); \.\.\.\); list one entry") as caught:
        load_class_texts([[name] for name in names[1:] + names[:1]], names)  # all 4 moved, 3 shown
    assert str(caught.value).count("but category") == 3


def test_indented_comment_lines_are_not_class_texts(tmp_path):
    lines = tmp_path / "names.txt"
    lines.write_text("cat\n  # the vehicles\n\t# (tab)\nred car\n")
    assert load_class_texts(lines, None) == [["cat"], ["red car"]]


def test_sample_texts_draws_every_synonym_and_pads_only_when_asked():
    """Training draws a random synonym per class (official RandomLoadText), not always the first."""
    class_texts = [["bike", "bicycle"], ["car"]]
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):  # P(one synonym never drawn in 40 draws) = 2 * 0.5**40
        texts, new_labels, _ = sample_texts(np.array([0]), class_texts, rng, num_texts=4)
        seen.add(texts[new_labels[0]])
    assert seen == {"bike", "bicycle"}
    texts, _, _ = sample_texts(np.array([0]), class_texts, rng, num_texts=4, pad=False)
    assert len(texts) == 2 and "" not in texts


def test_json_suffix_is_recognised_in_any_case(tmp_path):
    # [["a", "b"]] read as one-text-per-line would be a single text '[["a", "b"]]'
    path = tmp_path / "TEXTS.JSON"
    path.write_text('[["a", "b"], ["c"]]')
    assert load_class_texts(path, ["x", "y"]) == [["a", "b"], ["c"]]


def test_the_order_check_stays_fast_for_a_large_vocabulary():
    """LVIS-sized class texts (1203 classes, synonyms) are checked in one pass, not one per class: the
    check runs for every annotation file a run or an eval reads, on every process."""
    import time

    names = [f"class {i}" for i in range(1203)]
    texts = [[name, f"{name} synonym", f"another {name}"] for name in names]
    start = time.perf_counter()
    assert load_class_texts(texts, names) == texts
    assert time.perf_counter() - start < 1.0


def test_a_class_text_file_in_the_wrong_format_says_what_the_formats_are(tmp_path):
    # JSON in a file not named .json would be read as one class named '[["red"], ...'
    misnamed = tmp_path / "texts.txt"
    for content in ('[["red"], ["green"]]\n', '\n  [["red"],\n   ["green"]]\n'):  # also after blank lines
        misnamed.write_text(content)
        for names in (["red", "green"], None):  # training and evaluation; predict and export
            with pytest.raises(DataError, match=r"texts.txt holds a JSON list, but only a file named \.json is read "
                                                r"as JSON .*: rename it to \.json"):
                load_class_texts(misnamed, names)
    lines = tmp_path / "lines.json"  # one text per line, named .json
    lines.write_text("red\ngreen\n")
    with pytest.raises(DataError, match=r"lines.json: malformed JSON \(.*\); a \.json class-text file holds a list "
                                        r"of synonym lists, e.g. \[\[\"person\"\], \[\"bicycle\", \"bike\"\]\] "
                                        r"\(a file of another suffix, e.g. \.txt, holds one text per line\)"):
        load_class_texts(lines, ["red", "green"])
    mapping = tmp_path / "ids.json"  # {category id: name}
    mapping.write_text('{"1": "red", "3": "green"}')
    with pytest.raises(DataError, match=r"ids.json: expected a JSON list of synonym lists, e.g. \[\[.*, got dict"):
        load_class_texts(mapping, ["red", "green"])
    # a text line starting with '[' that is no JSON list is an ordinary class text
    bracket = tmp_path / "bracket.txt"
    bracket.write_text("[unused]\nred\n")
    assert load_class_texts(bracket, None) == [["[unused]"], ["red"]]


def test_comma_separated_classes_in_a_text_file_are_pointed_out(tmp_path):
    csv = tmp_path / "classes.txt"
    csv.write_text("red,green\n")
    with pytest.raises(DataError, match=r"classes.txt has 1 entries but the annotation file has 2 categories "
                                        r"\(.*read as one text per line, and 'red,green' holds commas: put each "
                                        r"class on a line of its own\)"):
        load_class_texts(csv, ["red", "green"])
    with pytest.raises(DataError, match=r"classes.txt has 1 entries but val.json has 2 categories"):
        load_class_texts(csv, ["red", "green"], "val.json")  # the file is named when the caller gives it
    with pytest.warns(UserWarning, match=r"classes.txt: every line holds a comma \('red,green'\), but each line "
                                         r"is one class text"):
        assert load_class_texts(csv, None) == [["red,green"]]  # a vocabulary: still read as written
    some = tmp_path / "some.txt"  # a comma inside one of several texts is no sign of a wrong format
    some.write_text("red car, parked\nperson\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_class_texts(some, None) == [["red car, parked"], ["person"]]


def test_an_entry_missing_in_the_middle_is_listed_from_where_the_entries_shift():
    """One entry short in the middle (or one category too many there, as a val export listing an extra
    class): every later entry goes to the category before its own, so the listing starts at the first
    entry that is not its category's name, not at the last category, which does have its entry."""
    names = ["traffic cone", "Forklift", "pallet jack", "café table"]
    texts = [["traffic cone"], ["forklift"], ["café table"]]
    with pytest.raises(DataError) as info:
        load_class_texts(texts, names, "val.json")
    assert str(info.value).splitlines() == [
        "class_texts has 3 entries but val.json has 4 categories; from entry 2 on, the first that is not its "
        "category's name:",
        "  2: category 'pallet jack' <-> texts ['café table']",
        "  3: category 'café table' <-> texts <none>"]
    # the entries there all hold their names: only the last category lacks one
    with pytest.raises(DataError, match=r"4 categories; unmatched:\n  3: category 'café table' <-> texts <none>$"):
        load_class_texts(texts[:2] + [["pallet jack"]], names, "val.json")
