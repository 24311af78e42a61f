"""COCO instances JSON + image folder, validated eagerly, as plain per-image records.

Category ids may be non-contiguous: they are sorted and mapped to labels 0..K-1
(`cat_ids[label]` maps back). Crowd, `ignore`-flagged and degenerate (w<1, h<1 or
area<=0) instances stay in the record with `ignore=True`: training drops them, evaluation
reads the JSON itself. Every problem that can be found without decoding images is
found at construction, with the file and annotation id in the message, so nothing
fails later inside a DataLoader worker with a bare traceback.
"""
import contextlib
import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np

from worldtune.data.image_files import (MOTION_PHOTO_NOTE, exif_frame_unknown, image_file_problem, jpeg_cut_short,
                                       read_image_bgr)
from worldtune.data.jpeg_header import jpeg_orientation
from worldtune.data.polygons import merge_polygon_parts, polygons_from_segmentation
from worldtune.data.texts import load_class_texts
from worldtune.jsonfile import as_id, id_problem, is_finite_number, is_int, load_json


class DataError(ValueError):
    """Bad annotation file, class-text file or image; the message names the file and the item."""


_every_file_warned = False  # True inside `every_file_warned()`


@contextlib.contextmanager
def every_file_warned():
    """Inside, `CocoDetection.load_image` warns about every bad file (once per file and process),
    whatever the dataset's `warn_limit`: for a caller that lists and counts the warnings itself, as
    the loaders do in their main process over all their workers (`loader.WarningsWithSample`)."""
    global _every_file_warned
    before, _every_file_warned = _every_file_warned, True
    try:
        yield
    finally:
        _every_file_warned = before


def _load_json(path: Path):
    if not path.is_file():
        raise DataError(f"annotation file {path} " + ("is a folder, not a COCO JSON file" if path.is_dir()
                                                      else "does not exist"))
    try:
        return load_json(path)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON ({e})") from None


def _require(obj: dict, keys: tuple, what: str, ann_file: Path):
    if not isinstance(obj, dict):
        raise DataError(f"{ann_file}: an entry of the {what}s must be an object, got {str(obj)[:200]}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{ann_file}: {what} lacks field(s) {missing}: {str(obj)[:200]}")


def _is_size(value) -> bool:
    """A positive whole number (COCO writes ints; some tools write 640.0)."""
    return (is_int(value) or (isinstance(value, float) and value.is_integer())) and value > 0


def _rle_problem(rle: dict, img: dict) -> str:
    """What is wrong with an RLE segmentation ("" if nothing), short of decoding it (`get_record`
    does, when the pipeline asks). pycocotools would otherwise fail deep inside a DataLoader worker
    with a TypeError or, for a 'size' other than the image's, give polygons in another frame."""
    size, counts = rle["size"], rle["counts"]
    if not (all(is_int(v) and v > 0 for v in size) and size == [int(img["height"]), int(img["width"])]):
        return f"RLE segmentation 'size' {size} is not the image's [height, width] [{img['height']}, {img['width']}]"
    if isinstance(counts, list):
        if not all(is_int(v) and v >= 0 for v in counts) or sum(counts) != size[0] * size[1]:
            return (f"RLE segmentation 'counts' must be non-negative integers adding up to height x width = "
                    f"{size[0] * size[1]}, got {str(counts)[:80]}")
        return ""
    if not isinstance(counts, str):
        return f"RLE segmentation 'counts' must be a string or a list of integers, got {str(counts)[:80]}"
    return ""


def _ignored(ann: dict, img: dict) -> bool:
    """Crowd, flagged `ignore` (any true value), degenerate (w or h < 1, area <= 0) or not
    overlapping its image: kept for evaluation, not trained on (the official loader skips them;
    COCO scoring reads `iscrowd`, not `ignore`)."""
    x, y, w, h = ann["bbox"]
    overlap_w = min(x + w, img["width"]) - max(x, 0)
    overlap_h = min(y + h, img["height"]) - max(y, 0)
    return bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", False)) or w < 1 or h < 1 \
        or ann.get("area", w * h) <= 0 or overlap_w <= 0 or overlap_h <= 0


def _warn_same_texts(ann_file: Path, class_names: list, cat_ids: list) -> None:
    """Warn when categories share their (first) text: an open-vocabulary head scores a class by
    its text embedding, so such classes get identical scores and cannot be told apart."""
    seen: dict = {}
    for name, cat_id in zip(class_names, cat_ids):
        seen.setdefault(name, []).append(cat_id)
    clashes = {name: ids for name, ids in seen.items() if len(ids) > 1}
    if clashes:
        listed = "; ".join(f"{name!r}: category ids {ids}" for name, ids in list(clashes.items())[:10])
        warnings.warn(f"{ann_file}: categories share a text, so the model cannot tell them apart ({listed}); "
                      "give each its own name or class-text entry", stacklevel=3)


def _other_categories(ann_file: Path, names_by_id: dict, reference, class_texts) -> str:
    """Why a file whose categories are not those of `reference` (a CocoDetection) cannot use the class
    texts written for it: entry k names the k-th category, so each entry past the shared ones would be
    missing or go to another class."""
    reference_names = dict(zip(reference.cat_ids, reference.category_names))

    def listed(ids, names):
        shown = ", ".join(f"{i} {names[i]!r}" for i in ids[:5])
        return shown + (f", ... ({len(ids)} in all)" if len(ids) > 5 else "")

    only_here = sorted(set(names_by_id) - set(reference_names))
    only_there = sorted(set(reference_names) - set(names_by_id))
    differences = ([f"only {ann_file} has category id(s) {listed(only_here, names_by_id)}"] if only_here else []) \
        + ([f"only {reference.ann_file} has {listed(only_there, reference_names)}"] if only_there else [])
    texts = class_texts if isinstance(class_texts, (str, Path)) else "the class texts"
    return (f"{ann_file} has {len(names_by_id)} categories and {reference.ann_file} {len(reference_names)}, but "
            f"{texts} holds one entry per category of {reference.ann_file}: " + "; ".join(differences)
            + ". Give both files the same categories, or leave out the class texts (--class-texts), so that each "
            "file's classes are named by their category names")


class CocoDetection:
    """A COCO-format detection set.

    Args:
        ann_file: COCO instances JSON (`images`, `categories`, optional `annotations`).
        image_dir: folder that `file_name` entries are relative to.
        class_texts: path to a JSON list of synonym lists (one per category, in category-id
            order), an in-memory list of lists, or None for `[[name]]` from the categories.
        on_bad_data: "error" raises `DataError` on the first problem; "skip" drops bad
            annotations / images, counts them and warns once.
        min_size: images whose shorter side is below this are left out (official: 32).
        check_text_order: refuse class texts that name the categories in another order
            (`texts.load_class_texts`); off for a val file compared with the training file's instead.
        texts_written_for: the CocoDetection whose categories `class_texts` lists, when that is another
            file (a val file read with the training file's class texts): a file with another number of
            categories is refused naming the categories the two files do not share.

    Attributes:
        num_classes, class_names (first synonyms), class_texts (synonym lists),
        cat_ids (label -> COCO category id), cat_id_to_label, image_ids (index -> image id),
        skipped (dict reason -> count), num_annotations (of the images kept), num_trainable (instances
        neither crowd, flagged `ignore`, degenerate nor outside their image),
        num_without_polygons (trainable instances lacking a usable segmentation; the annotation ids
        of the first 5: ids_without_polygons); under
        on_bad_data="skip", dropped_image_ids (images whose file is missing) and
        dropped_annotations (positions in the file's `annotations` list), which scoring leaves out
        too (`worldtune.eval.evaluate.score_detections`).
    """

    def __init__(self, ann_file, image_dir, class_texts=None, on_bad_data: str = "error", min_size: int = 32,
                 check_text_order: bool = True, texts_written_for=None):
        if on_bad_data not in ("error", "skip"):
            raise ValueError(f"on_bad_data must be 'error' or 'skip', got {on_bad_data!r}")
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        if self.image_dir.exists() and not self.image_dir.is_dir():
            raise DataError(f"image folder {self.image_dir} is a file, not a folder")
        self.on_bad_data = on_bad_data
        self.skipped: dict = {}
        self.dropped_image_ids: list = []
        self.dropped_annotations: list = []
        self._size_warned: set = set()  # images whose decoded size differs from the annotation file's
        self._end_checked: set = set()  # images checked for a missing JPEG end marker
        # False where the caller checked every file before (`image_file_problems`) and warned itself
        self.check_ends_at_decode = True
        self._cut_warned = 0  # JPEG files cut short, warned about
        self._exif_noted = False  # said that an EXIF orientation's frame cannot be told from the size
        # How many files per problem `load_image` warns about in this process; None: every one (once).
        # Not applied inside `every_file_warned()` (the loaders list and count the warnings themselves).
        self.warn_limit: int | None = 3
        data = _load_json(self.ann_file)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
                or not isinstance(data.get("categories"), list):
            raise DataError(f"{self.ann_file}: not a COCO instances file (needs 'images' and 'categories' lists)")
        if not isinstance(data.get("annotations", []), list):
            raise DataError(f"{self.ann_file}: 'annotations' must be a list, got {type(data['annotations']).__name__}")
        if not self.image_dir.exists():  # else every image is reported missing, and 'skip' empties the set
            raise DataError(f"image folder {self.image_dir} does not exist (the images of {self.ann_file})")

        cats = data["categories"]
        if not cats:
            raise DataError(f"{self.ann_file}: 'categories' is empty; a detector needs at least one class")
        for c in cats:
            _require(c, ("id", "name"), "category", self.ann_file)
            # ids are compared with the annotations' integer category_id; a name is the class text
            # when no class-text file is given ("" is the padding text, which a class cannot use)
            if id_problem(c["id"]):
                raise DataError(f"{self.ann_file}: category {str(c)[:100]}: 'id' {id_problem(c['id'])}")
            c["id"] = as_id(c["id"])  # 9.0 is 9 from here on (this parsed file is ours to change)
            if not isinstance(c["name"], str) or (class_texts is None and not c["name"].strip()):
                raise DataError(f"{self.ann_file}: category id {c['id']}: 'name' must be a non-empty string, "
                                f"got {c['name']!r}" + ("" if class_texts is not None else
                                                        " (or give class texts, --class-texts)"))
        self.cat_ids = sorted(int(c["id"]) for c in cats)
        if len(set(self.cat_ids)) != len(self.cat_ids):
            raise DataError(f"{self.ann_file}: duplicate category ids in {self.cat_ids}")
        self.cat_id_to_label = {cid: i for i, cid in enumerate(self.cat_ids)}
        names_by_id = {int(c["id"]): str(c["name"]) for c in cats}
        self.category_names = [names_by_id[cid] for cid in self.cat_ids]
        if texts_written_for is not None and class_texts is not None \
                and len(self.cat_ids) != texts_written_for.num_classes:
            raise DataError(_other_categories(self.ann_file, names_by_id, texts_written_for, class_texts))
        self.class_texts = load_class_texts(class_texts, self.category_names, self.ann_file, check_text_order)
        self.class_names = [t[0] for t in self.class_texts]
        _warn_same_texts(self.ann_file, self.class_names, self.cat_ids)

        images = {}
        for position, img in enumerate(data["images"]):
            _require(img, ("id", "file_name", "width", "height"), "image", self.ann_file)
            # checked here, not left to int() or to the COCO APIs: a string id "7" would never match
            # an annotation's image_id 7, and a bad size would fail later inside the pipeline
            if id_problem(img["id"]):  # named by its file: the entry's text, cut short, could end anywhere
                raise DataError(f"{self.ann_file}: image {str(img['file_name'])[:100]!r} (entry {position} of "
                                f"'images'): 'id' {id_problem(img['id'])}")
            img["id"] = as_id(img["id"])
            if not isinstance(img["file_name"], str) or not img["file_name"]:
                raise DataError(f"{self.ann_file}: image id {img['id']}: 'file_name' must be a non-empty string, "
                                f"got {img['file_name']!r}")
            for key in ("width", "height"):
                if not _is_size(img[key]):
                    raise DataError(f"{self.ann_file}: image id {img['id']}: '{key}' must be a positive integer, "
                                    f"got {img[key]!r}")
            image_id = img["id"]
            if image_id in images:  # which one would its annotations belong to?
                raise DataError(f"{self.ann_file}: image id {image_id} is used twice ({images[image_id]['file_name']} "
                                f"and {img['file_name']}); image ids must be unique")
            images[image_id] = img
        anns_by_image = {i: [] for i in images}
        for position, ann in enumerate(data.get("annotations", [])):
            problem = self._check_annotation(ann, images)
            if problem:
                name = f"id {ann['id']}" if isinstance(ann, dict) and "id" in ann else f"#{position} (no id)"
                self._bad("bad annotation", f"{self.ann_file}: annotation {name}: {problem}")
                self.dropped_annotations.append(position)
                continue
            for key in ("id", "image_id", "category_id"):
                ann[key] = as_id(ann[key])
            anns_by_image[ann["image_id"]].append(ann)

        self.image_ids, entries, small, folder_checked = [], [], 0, False
        for image_id, img in images.items():
            if min(int(img["width"]), int(img["height"])) < min_size:
                small += 1
                continue
            path = self.image_dir / img["file_name"]
            if "\\" in img["file_name"] and not os.path.isfile(path):  # written on Windows: day1\a.jpg
                posix = img["file_name"].replace("\\", "/")
                if os.path.isfile(self.image_dir / posix):
                    img = dict(img, file_name=posix)
                    path = self.image_dir / posix
            if not os.path.isfile(path) and not folder_checked:  # once: the search reads every name
                folder_checked = True
                if not any(os.path.isfile(self.image_dir / im["file_name"].replace("\\", "/"))
                           for im in images.values()):
                    # a wrong folder: naming its first image and offering 'skip', which would drop all, misleads
                    raise DataError(f"image folder {self.image_dir} holds none of the {len(images)} images of "
                                    f"{self.ann_file} (e.g. {path} does not exist): is it the right folder?")
            if not os.path.isfile(path):
                self._bad("missing image", f"{self.ann_file}: image id {image_id}: file {path} "
                          + ("is a folder, not an image" if os.path.isdir(path) else "does not exist"))
                self.dropped_image_ids.append(image_id)
                continue
            self.image_ids.append(image_id)
            entries.append((img, anns_by_image[image_id]))
        if not self.image_ids:
            raise DataError(f"{self.ann_file}: dataset is empty (no usable image with min side >= {min_size}"
                            f" in {self.image_dir}; skipped: {self.skipped})")
        self.num_annotations = sum(len(anns) for _, anns in entries)
        self.num_trainable = sum(1 for img, anns in entries for a in anns if not _ignored(a, img))
        without = [a["id"] for img, anns in entries for a in anns
                   if not _ignored(a, img) and not self._has_segmentation(a)]
        self.num_without_polygons, self.ids_without_polygons = len(without), without[:5]
        # Keep each image's (image dict, annotations) pickled in one flat byte array: millions of
        # small Python objects would be copied page by page into every forked DataLoader worker
        # as their reference counts change (the "copy-on-read" growth), a byte array is not.
        blobs = [pickle.dumps(e, protocol=pickle.HIGHEST_PROTOCOL) for e in entries]
        self._offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        self._blob = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        # (height, width) per index without unpickling an entry: read on every decode and by the caches
        self._sizes = np.array([(int(img["height"]), int(img["width"])) for img, _ in entries], dtype=np.int64)
        if self.skipped:
            warnings.warn(f"{self.ann_file}: skipped {self.skipped} (on_bad_data='skip')", stacklevel=2)
        if small:  # the official rule; in evaluation their objects still count as missed
            warnings.warn(f"{self.ann_file}: {small} image(s) with a side under min_size={min_size} px left out "
                          "(the official filter)", stacklevel=2)

    # -- validation -------------------------------------------------------------------
    def _check_annotation(self, ann, images: dict) -> str:
        if not isinstance(ann, dict):
            return f"not an object: {str(ann)[:80]}"
        segm = ann.get("segmentation")
        if not (segm is None or (isinstance(segm, list) and all(isinstance(p, list) for p in segm))
                or (isinstance(segm, dict) and "counts" in segm and isinstance(segm.get("size"), list)
                    and len(segm["size"]) == 2)):
            return ("segmentation must be a list of polygons (lists of x, y numbers) or an RLE "
                    f"{{'counts', 'size': [h, w]}}, got {str(segm)[:80]}")
        missing = [k for k in ("id", "image_id", "category_id", "bbox") if k not in ann]
        if missing:
            return f"lacks field(s) {missing}"
        for key in ("id", "image_id", "category_id"):
            if id_problem(ann[key]):
                return f"{key} {id_problem(ann[key])}"
        if ann.get("iscrowd", 0) not in (0, 1):  # True/False pass too (0 == False)
            return f"iscrowd must be 0 or 1, got {ann['iscrowd']!r}"
        area = ann.get("area", 0)
        if not is_finite_number(area):
            return f"area must be a finite number, got {area!r}"
        if ann["image_id"] not in images:
            return f"unknown image_id {ann['image_id']}"
        if ann["category_id"] not in self.cat_id_to_label:
            return f"unknown category_id {ann['category_id']} (known: {self.cat_ids})"
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4
                and all(is_finite_number(v) for v in box)):
            return f"bbox must be 4 finite numbers [x, y, w, h], got {box}"
        if box[2] < 0 or box[3] < 0:
            return f"bbox {box} has negative size"
        if isinstance(segm, dict):
            return _rle_problem(segm, images[ann["image_id"]])
        return ""

    def _bad(self, reason: str, message: str):
        if self.on_bad_data == "error":
            raise DataError(message + " (--on-bad-data skip, or on_bad_data='skip' in Python, drops it)")
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @staticmethod
    def _has_segmentation(ann: dict) -> bool:
        segm = ann.get("segmentation")
        if isinstance(segm, dict):
            return "counts" in segm
        return isinstance(segm, list) and any(isinstance(p, list) and len(p) % 2 == 0 and len(p) >= 6 for p in segm)

    # -- access -----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def _entry(self, index: int):
        """(image dict, list of annotation dicts) of one index, as read from the JSON."""
        return pickle.loads(self._blob[self._offsets[index]:self._offsets[index + 1]].tobytes())

    def image_size(self, index: int) -> tuple:
        """(height, width) of image `index` as the annotation file gives it (no decoding)."""
        height, width = self._sizes[index].tolist()
        return height, width

    def image_path(self, index: int) -> Path:
        return self.image_dir / self._entry(index)[0]["file_name"]

    def image_file_problems(self, limit: int = 5) -> dict:
        """{"not_pictures": (count, first `limit` paths), "cut_short": (...)} over every image file,
        in one pass (`image_file_problem`)."""
        found = {"not_pictures": [], "cut_short": []}
        for index in range(len(self)):
            path = self.image_path(index)
            problem = image_file_problem(path)
            if problem:
                found[problem].append(str(path))
        return {problem: (len(paths), paths[:limit]) for problem, paths in found.items()}

    def load_image(self, index: int) -> np.ndarray:
        """uint8 [H, W, 3] BGR (grayscale files are expanded). Raises DataError naming the file."""
        path, expected = self.image_path(index), self.image_size(index)
        header = jpeg_orientation(path)
        img = read_image_bgr(path, expected, header)  # in the annotation's frame where EXIF alone differs
        if img is None:
            raise DataError(f"cannot read image {path} (image id {self.image_ids[index]}): missing or corrupt")
        if header is not None and not self._exif_noted and exif_frame_unknown(header[0], expected):
            # One note per process, naming no file: the loaders then show it once per run, whatever
            # the workers (each would meet another file first).
            self._exif_noted = True
            warnings.warn(f"{self.ann_file}: some images carry an EXIF orientation that their width and height "
                          "there cannot confirm (a half turn, a mirror, or a quarter turn of a square image): they "
                          "are read turned, as OpenCV and the official loader read them, so their boxes must be in "
                          "the turned frame (as tools that apply the orientation draw them)", stacklevel=2)
        if self.check_ends_at_decode and index not in self._end_checked:  # once per image and process
            self._end_checked.add(index)
            if jpeg_cut_short(path):
                self._cut_warned += 1  # a few times per process, as below
                if self._listed(self._cut_warned):
                    warnings.warn(f"{path} (image id {self.image_ids[index]}) is cut short (no JPEG end marker): "
                                  "its missing rows decode as grey and are trained on as they are; restore the file "
                                  f"({MOTION_PHOTO_NOTE})" + self._last_listed(self._cut_warned), stacklevel=2)
        if img.shape[:2] != expected and index not in self._size_warned:
            # The official pipeline uses the boxes as given too; say so, a few times per process.
            self._size_warned.add(index)
            if self._listed(len(self._size_warned)):
                # sides swapped: likely a rotation; others: resized after annotation, or the wrong file
                turned = img.shape[:2] == expected[::-1]
                warnings.warn(f"{path}: decoded {img.shape[1]}x{img.shape[0]}, but {self.ann_file} says "
                              f"{expected[1]}x{expected[0]}{' (an EXIF rotation?)' if turned else ''}; its boxes are "
                              "used as given, so they may not match the pixels: fix the annotation or the file"
                              + self._last_listed(len(self._size_warned)), stacklevel=2)
        return img

    def _listed(self, count: int) -> bool:
        return _every_file_warned or self.warn_limit is None or count <= self.warn_limit

    def _last_listed(self, count: int) -> str:
        last = count == self.warn_limit and not _every_file_warned
        return " (further such images are not listed)" if last else ""

    def _polygons(self, ann: dict, img: dict, h: int, w: int) -> list:
        """`merge_polygon_parts(polygons_from_segmentation(...))` of one annotation. A compressed
        RLE is decoded only here, when the pipeline needs it (checking every one at load would cost
        ~0.5 ms each): one that cannot be decoded is an error, or under "skip" a box without polygon."""
        try:
            return merge_polygon_parts(polygons_from_segmentation(ann.get("segmentation"), h, w))
        except (ValueError, UnicodeEncodeError) as e:
            counts = str(ann["segmentation"].get("counts"))[:40] if isinstance(ann.get("segmentation"), dict) else ""
            message = (f"{self.ann_file}: annotation id {ann['id']} (image id {img['id']}): RLE segmentation "
                       f"'counts' cannot be decoded ({e}): {counts!r}")
            if self.on_bad_data == "error":
                raise DataError(message) from None
            warnings.warn(f"{message}; its box is used without a polygon", stacklevel=2)
            return []

    def get_record(self, index: int) -> dict:
        """Raw annotations of one image (no pixels).

        Returns:
            dict(image_id, file_name (full path), height, width, ann_ids int64 [N],
            bboxes float32 [N, 4] xyxy from the annotation `bbox`, labels int64 [N] in 0..K-1,
            ignore bool [N] (crowd, degenerate or outside the image), polygons: list of N lists of float32 [P, 2]
            parts (empty list for crowd instances or when the segmentation is unusable; multi-part
            polygons merged into one, `merge_polygon_parts`)).
        """
        img, anns = self._entry(index)
        h, w = int(img["height"]), int(img["width"])
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        ignore = np.array([_ignored(a, img) for a in anns], dtype=bool)
        polygons = [[] if a.get("iscrowd", 0) else self._polygons(a, img, h, w) for a in anns]
        return {
            "image_id": self.image_ids[index], "file_name": str(self.image_dir / img["file_name"]),
            "height": h, "width": w,
            "ann_ids": np.array([a["id"] for a in anns], dtype=np.int64),
            "bboxes": boxes, "labels": np.array([self.cat_id_to_label[int(a["category_id"])] for a in anns],
                                                dtype=np.int64),
            "ignore": ignore, "polygons": polygons,
        }


def warn_image_file_problems(coco: CocoDetection, scoring: str) -> None:
    """Warn, before anything is decoded, about evaluation files that do not look like pictures or are
    JPEGs cut short (`image_file_problem`), which `scoring` (e.g. "the first validation") would
    otherwise meet only when it gets to them. `coco` then no longer checks the JPEG ends at decode:
    that would read every file again and warn about each file cut short a second time."""
    coco.check_ends_at_decode = False
    problems = coco.image_file_problems()
    count, first = problems["not_pictures"]
    if count:
        then = (f"{scoring} will stop on them (--on-bad-data skip leaves them out)" if coco.on_bad_data == "error"
                else f"{scoring} will leave them out")
        warnings.warn(f"{count} validation image file(s) do not look like pictures, e.g. {', '.join(first)}: {then}",
                      stacklevel=2)
    count, first = problems["cut_short"]
    if count:
        warnings.warn(f"{count} validation JPEG file(s) are cut short (no end marker), e.g. {', '.join(first)}: "
                      f"their missing rows decode as grey, so their objects score as misses; "
                      f"restore them ({MOTION_PHOTO_NOTE})",
                      stacklevel=2)
