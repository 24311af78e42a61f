"""Tiny training runs for engine/CLI tests: generated COCO set + tiny CLIP text tower + `n` model.

`tiny_config(root)` returns a `worldtune.config.Config` that trains the `n` variant on the
coloured-shapes set of `coco_factory` at a small image size, on CPU, with the official loop
(only sizes, epochs and the warm-up length are shrunk). Building the text tower folder takes a
few seconds, so it is made once per process and reused.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from tests.helpers.clip_factory import make_clip_text_folder
from tests.helpers.coco_factory import make_tiny_coco

_SHARED = {}


def tiny_text_model() -> Path:
    """A 1-layer, 32-wide CLIP text tower with a 512-d projection and the real tokenizer."""
    if "text" not in _SHARED:
        folder = Path(tempfile.mkdtemp(prefix="worldtune-tiny-clip-"))
        make_clip_text_folder(folder, hidden=32, layers=1, heads=2, projection=512)
        _SHARED["text"] = folder
    return _SHARED["text"]


def tiny_dataset(root: Path, num_images: int = 6) -> dict:
    """The coloured-shapes COCO set, written once per process and copied to `root`."""
    key = f"coco{num_images}"
    if key not in _SHARED:
        folder = Path(tempfile.mkdtemp(prefix="worldtune-tiny-coco-"))
        _SHARED[key] = (folder, make_tiny_coco(folder, num_images=num_images))
    folder, info = _SHARED[key]
    root = Path(root)
    if not root.exists():
        shutil.copytree(folder, root)
    return {k: (root / Path(v).relative_to(folder) if isinstance(v, Path) else v) for k, v in info.items()}


def one_class(ann_file: Path) -> Path:
    """A copy of a COCO file whose categories are merged into one, "shape"."""
    coco = json.loads(Path(ann_file).read_text())
    for ann in coco["annotations"]:
        ann["category_id"] = 1
    coco["categories"] = [{"id": 1, "name": "shape"}]
    out = Path(ann_file).with_name("one_class.json")
    out.write_text(json.dumps(coco))
    return out


def tiny_config(root, epochs: int = 2, imgsz: int = 64, batch_size: int = 3, num_images: int = 6,
                single_class: bool = False, **train):
    """Config for a CPU run on the tiny set (train = val = the same images, so a model can overfit).

    single_class: merge the 5 colour classes into one (a random text tower gives the colour names
    nearly parallel embeddings, which takes far longer to separate than a test may run).
    Extra keyword arguments set `train.<key>`.
    """
    from worldtune.config import Config

    root = Path(root)
    data = tiny_dataset(root / "data", num_images)
    if single_class:
        data["ann_file"], data["class_texts_file"] = one_class(data["ann_file"]), None
    cfg = Config(out=str(root / "run"))
    cfg.model.variant, cfg.model.weights, cfg.model.text_model = "n", "none", str(tiny_text_model())
    d = cfg.data
    d.train_ann = d.val_ann = str(data["ann_file"])
    d.train_images = d.val_images = str(data["image_dir"])
    d.class_texts = str(data["class_texts_file"]) if data["class_texts_file"] else ""
    d.imgsz, d.workers, d.num_texts = imgsz, 0, 1 if single_class else 5
    d.mixup_prob = d.copypaste_prob = 0.0
    t = cfg.train
    t.epochs, t.batch_size, t.device, t.log_interval = epochs, batch_size, "cpu", 1
    t.min_warmup_iters, t.warmup_epochs, t.close_mosaic_epochs = 2, 1.0, 0
    t.val_interval, t.checkpoint_interval = 0, 0
    for key, value in train.items():
        setattr(t, key, value)
    return cfg
