"""Class texts: the official JSON list of synonym lists, and per-image text sampling.

Format: `[["person"], ["bicycle", "bike"], ...]`, one entry per class in category-id
order. Training draws a random synonym per class, evaluation takes the first. A file not named
.json holds one text per line (no synonyms; lines whose first non-blank character is # are skipped).
"""
import json
import warnings
from pathlib import Path

import numpy as np

EXAMPLE = '[["person"], ["bicycle", "bike"]]'  # the official format, shown in messages


def load_class_texts(source, category_names: list | None, ann_file=None, check_order: bool = True) -> list:
    """Resolve class texts to a list (one per class) of non-empty lists of strings.

    Args:
        source: None (use `[[name]]` from `category_names`), a path to a JSON file (a list of
            synonym lists) or to a text file of another suffix (one text per line), or a list.
        category_names: names of the categories in label order (used for None and messages), or
            None to take the file's entries as they are, however many (a vocabulary for `predict`).
        ann_file: the annotation file the categories come from, named in messages.
        check_order: refuse entries that name the categories in another order (see `_check_order`);
            off where the caller compares the file's categories with another's that were checked.
    Raises:
        ValueError (DataError) naming the file and the mismatch when the entry count differs
        from the number of categories or an entry is not a list of strings.
    """
    from worldtune.data.coco import DataError  # local: coco imports this module

    if source is None:
        return [[str(n)] for n in category_names]
    where, comma_lines = "class_texts", []
    if isinstance(source, (str, Path)):
        where = str(source)
        if not Path(source).is_file():
            problem = "is a folder" if Path(source).is_dir() else "does not exist"
            raise DataError(f"class-text file {where} {problem}")
        try:
            raw = Path(source).read_text(encoding="utf-8-sig")  # a byte-order mark would join the first text
        except UnicodeDecodeError as e:
            raise DataError(f"class-text file {where}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
        if Path(source).suffix.lower() != ".json":  # one class per line
            source = _text_lines(raw, where)
            comma_lines = [line for line in source if "," in line]
        else:
            try:
                source = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError(f"class-text file {where}: malformed JSON ({e}); a .json class-text file holds "
                                f"a list of synonym lists, e.g. {EXAMPLE} (a file of another suffix, e.g. .txt, "
                                "holds one text per line)") from None
    if not isinstance(source, list):
        raise DataError(f"{where}: expected a JSON list of synonym lists, e.g. {EXAMPLE}, got {type(source).__name__}")
    texts = []
    for i, entry in enumerate(source):
        if isinstance(entry, str):
            entry = [entry]
        if not (isinstance(entry, list) and entry and all(isinstance(s, str) and s.strip() for s in entry)):
            # ("" is the padding text, trained as a negative: a class named so could not be learnt)
            raise DataError(f"{where}: entry {i} must be a non-empty list of non-empty strings, got {entry!r}")
        texts.append(list(entry))
    if category_names is not None and len(texts) != len(category_names):
        # Listed from the first entry that does not hold its category's name: an entry missing (or one
        # too many) in the middle shifts every later one, which the tail alone would not show.
        shared = min(len(texts), len(category_names))
        first = next((i for i in range(shared) if _key(category_names[i]) not in {_key(t) for t in texts[i]}), shared)
        rows = [f"  {i}: category {category_names[i] if i < len(category_names) else '<none>'!r}"
                f" <-> texts {texts[i] if i < len(texts) else '<none>'}"
                for i in range(first, max(len(texts), len(category_names)))]
        hint = f" ({where} is read as one text per line, and {comma_lines[0]!r} holds commas: put each " \
            "class on a line of its own)" if comma_lines else ""
        listed = "unmatched" if first == shared else f"from entry {first} on, the first that is not its category's name"
        raise DataError(f"{where} has {len(texts)} entries but {ann_file or 'the annotation file'} has "
                        f"{len(category_names)} categories{hint}; {listed}:\n" + "\n".join(rows[:20]))
    if category_names is None and comma_lines and len(comma_lines) == len(texts):
        warnings.warn(f"{where}: every line holds a comma ({comma_lines[0]!r}), but each line is one class text: "
                      "put each class on a line of its own (synonyms need a .json list of lists)", stacklevel=2)
    if category_names is not None and check_order:
        _check_order(texts, category_names, where, ann_file or "the annotation file")
    return texts


def _text_lines(raw: str, where: str) -> list[str]:
    """The texts of a class-text file not named .json: its non-blank lines, without # comments.
    Refuses a file that holds a JSON list: read line by line it would be one class named '[[...'."""
    from worldtune.data.coco import DataError  # local: coco imports this module

    if raw.lstrip().startswith("["):
        try:
            is_json_list = isinstance(json.loads(raw), list)
        except json.JSONDecodeError:
            is_json_list = False
        if is_json_list:
            raise DataError(f"class-text file {where} holds a JSON list, but only a file named .json is read as "
                            "JSON (another suffix means one text per line): rename it to .json")
    return [line.strip() for line in raw.splitlines() if line.strip() and not line.strip().startswith("#")]


def _key(text: str) -> str:
    """A text as names are compared: case and runs of spaces ignored."""
    return " ".join(text.lower().split())


def _check_order(texts: list, category_names: list, where: str, ann_file) -> None:
    """Refuse entries that name the categories in another order: entry k is class k (k-th smallest
    category id), while the official loader, and files written for it, follow the annotation file's
    listing order. Only a clear case is refused: every category name is a synonym of exactly one
    entry, and some of another entry than its own; texts that are not the names pass."""
    holders = {}  # text -> the entry positions holding it; built once: LVIS has 1203 classes
    for j, entry in enumerate(texts):
        for text in {_key(t) for t in entry}:
            holders.setdefault(text, []).append(j)
    owner = {}  # category position -> the entry position whose synonyms hold its name
    for k, name in enumerate(category_names):
        found = holders.get(_key(name), [])
        if len(found) != 1:
            return
        owner[k] = found[0]
    moved = [(k, j) for k, j in owner.items() if k != j]
    if moved and len(set(owner.values())) == len(owner):
        from worldtune.data.coco import DataError
        shown = "; ".join(f"entry {k} is {texts[k]} but category {k} is {category_names[k]!r} (entry {j})"
                          for k, j in moved[:3])
        raise DataError(f"{where}: the entries name the categories in another order than {ann_file}'s "
                        f"category ids, sorted ({shown}{'; ...' if len(moved) > 3 else ''}); list one entry per "
                        f"category in increasing id order, or leave the texts out to use the category names")


def sample_texts(labels: np.ndarray, class_texts: list, rng: np.random.Generator,
                 num_texts: int = 80, num_neg: int = 80, pad: bool = True):
    """Per-image vocabulary (official RandomLoadText with (80, 80) negatives, padding '').

    Positives are the classes present (subsampled to `num_texts` if more), negatives are
    drawn without replacement from the other classes, the list is shuffled and each label
    is remapped to its position; instances of classes left out are dropped.

    Args:
        labels: int64 [N] class indices.
        class_texts: synonym lists, one per class.
    Returns:
        (texts: list of `num_texts` strings (padded with '' when `pad`), new_labels int64 [N'],
         keep: bool [N] which input instances survive).
    """
    num_classes = len(class_texts)
    positives = np.unique(labels)
    if len(positives) > num_texts:
        positives = rng.choice(positives, num_texts, replace=False)
    others = np.setdiff1d(np.arange(num_classes), positives)
    n_neg = min(num_texts - len(positives), num_neg, len(others))
    negatives = rng.choice(others, n_neg, replace=False) if n_neg > 0 else others[:0]
    chosen = rng.permutation(np.concatenate([positives, negatives]).astype(np.int64))
    position = np.full(num_classes, -1, dtype=np.int64)
    position[chosen] = np.arange(len(chosen))
    new_labels = position[labels] if len(labels) else labels.astype(np.int64)
    keep = new_labels >= 0
    texts = [class_texts[c][int(rng.integers(len(class_texts[c])))] for c in chosen]
    if pad and len(texts) < num_texts:
        texts += [""] * (num_texts - len(texts))
    return texts, new_labels[keep], keep
