"""What a run is built from: the val file's categories judged against the training file's."""
import warnings
from types import SimpleNamespace

import pytest

from worldtune.data.coco import DataError
from worldtune.engine.setup import check_val_categories


def _coco(ann_file, names):
    return SimpleNamespace(ann_file=ann_file, category_names=list(names),
                           cat_ids=[10 * (k + 1) for k in range(len(names))],
                           class_texts=[[f"text of {n}"] for n in names])


def test_val_categories_numbered_otherwise_are_refused_and_listed_by_the_first_five():
    names = [f"c{k}" for k in range(7)]
    train = _coco("train.json", names)
    with pytest.raises(DataError) as caught:
        check_val_categories(train, _coco("val.json", names[1:] + names[:1]), "texts.json")
    message = str(caught.value)
    assert message.startswith("val.json numbers the categories of train.json otherwise, so the class-text file "
                              "texts.json")
    assert "category id 10 'c1' gets 'text of c1' (the training file's 'c0')" in message
    assert message.count(" gets ") == 5 and "; ... (7 in all)" in message


def test_renamed_val_categories_are_warned_about_and_only_the_differing_ones_listed():
    train = _coco("train.json", ["cat", "dog", "cup"])
    with pytest.warns(UserWarning, match=r"^val.json: its categories differ from train.json's, .*texts.json") as caught:
        check_val_categories(train, _coco("val.json", ["cat", "Dog", "cup"]), "texts.json")
    message = str(caught[0].message)
    assert message.endswith(": category id 20 'Dog' gets 'text of Dog' (the training file's 'dog')")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_val_categories(train, _coco("val.json", ["cat", "dog", "cup"]), "texts.json")  # the same
        check_val_categories(train, _coco("val.json", ["dog", "cat", "cup"]), "")  # each keeps its own name
