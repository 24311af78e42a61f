"""The published YOLO-World-v2 COCO checkpoints and how to fetch them safely.

Every row of the official COCO fine-tuning table (REFERENCE.md §1.1, §8) names the pre-trained
file its recipe starts from (`load_from`) and, except the efficient-neck row, a released
fine-tuned file. All live in the Hugging Face repository `wondervictor/YOLO-World`. File names end
in 8 hex digits, the first 8 of the file's SHA-256 (OpenMMLab convention), which we verify.

The file names are those the official READMEs link to (configs/finetune_coco/README.md for the
fine-tuned files, the pre-training table for `load_from`), checked against them on 2026-11-26;
the hub itself could not be listed from here, and its owner may rename files. A renamed file is
still usable: download it yourself and pass its local path.
"""
from __future__ import annotations

import difflib
import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HF_REPO = "wondervictor/YOLO-World"
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8})\.[A-Za-z0-9]+$")


@dataclass(frozen=True)
class ZooEntry:
    """One published COCO fine-tuning row. Metrics are COCO val2017 box AP in percent."""
    recipe: str
    variant: str                 # model variant: s, m, l, x, l_efficient_neck
    alias: str                   # short name of the fine-tuned checkpoint
    finetuned: str | None        # released fine-tuned file; None when not released
    pretrained: str              # the recipe's load_from file
    ap: float | None
    ap50: float | None
    ap75: float | None
    ap_zero_shot: float          # AP^ZS: the pre-trained model on COCO without fine-tuning
    note: str = ""


_P = "yolo_world_v2_{}_obj365v1_goldg_{}pretrain-{}.pth"
PRETRAINED = {
    "v2-s-pretrain": _P.format("s", "", "55b943ea"),
    "v2-m-pretrain": _P.format("m", "", "c6237d5b"),
    "v2-l-pretrain": _P.format("l", "cc3mlite_", "ca93cd1f"),
    "v2-x-pretrain": _P.format("x", "cc3mlite_", "8698fbfa"),
}
_R = "yolo_world_v2_{}_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco"

ZOO: tuple[ZooEntry, ...] = (
    ZooEntry(_R.format("s"), "s", "v2-s-coco", _R.format("s") + "_ep80-492dc329.pth",
             PRETRAINED["v2-s-pretrain"], 46.1, 62.0, 49.9, 37.5),
    ZooEntry(_R.format("m"), "m", "v2-m-coco", _R.format("m") + "_ep80-69c27ac7.pth",
             PRETRAINED["v2-m-pretrain"], 51.0, 67.5, 55.2, 42.8),
    ZooEntry(_R.format("l"), "l", "v2-l-coco", _R.format("l") + "_ep80-81c701ee.pth",
             PRETRAINED["v2-l-pretrain"], 53.9, 70.9, 58.8, 45.1),
    ZooEntry(_R.format("x"), "x", "v2-x-coco", _R.format("x") + "_ep80-76bc0cbd.pth",
             PRETRAINED["v2-x-pretrain"], 54.7, 71.6, 59.6, 46.8),
    ZooEntry("yolo_world_v2_l_efficient_neck_2e-4_80e_8gpus_mask-refine_finetune_coco", "l_efficient_neck",
             "v2-l-efficient-neck-coco", None, PRETRAINED["v2-l-pretrain"], None, None, None, 45.1,
             note="no fine-tuned file released and AP not published; fine-tune it yourself"),
    # The released file says _ep80 although the recipe trains 40 epochs (REFERENCE.md §1.3).
    ZooEntry("yolo_world_v2_l_vlpan_bn_sgd_1e-3_40e_8gpus_finetune_coco", "l", "v2-l-sgd-coco",
             "yolo_world_v2_l_vlpan_bn_sgd_1e-3_40e_8gpus_finetune_coco_ep80-e1288152.pth",
             PRETRAINED["v2-l-pretrain"], 52.8, 69.5, 57.8, 45.1, note="SGD, no mask-refine"),
)


class WeightsNotAvailableError(FileNotFoundError):
    """A zoo file is neither cached nor downloadable (offline, network error, unknown name)."""


class UnknownWeightsError(WeightsNotAvailableError):
    """A name that is neither an existing path nor a zoo name: the user's mistake, not the network's."""


class WeightsHashError(ValueError):
    """A file's SHA-256 does not start with the 8 hex digits its name promises."""


def names() -> dict[str, str]:
    """Every accepted name (alias, recipe, file name) -> file name. Read from ZOO at call time."""
    table = {}
    for alias, filename in PRETRAINED.items():
        table[alias] = table[filename] = filename
    for e in ZOO:
        if e.finetuned:
            table[e.alias] = table[e.recipe] = table[e.finetuned] = e.finetuned
    return table


def expected_sha256_prefix(filename: str) -> str | None:
    """The 8-hex suffix of an OpenMMLab-style name (`...-81c701ee.pth`), or None."""
    m = _HASH_SUFFIX.search(filename)
    return m.group(1) if m else None


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_hash(path: Path, filename: str, allow_hash_mismatch: bool = False) -> None:
    """Refuse `path` when its SHA-256 does not start with the suffix of `filename`."""
    expected = expected_sha256_prefix(filename)
    if expected is None:
        return
    actual = sha256_of(path)[:8]
    if actual == expected:
        return
    message = (f"{path}: SHA-256 starts with {actual} but the file name {filename} promises {expected}; "
               f"the file is corrupt, truncated or was replaced. Delete it and download again, or accept "
               f"it explicitly with allow_hash_mismatch=True (CLI: eval and zoo --get take --allow-hash-mismatch; "
               f"any command takes the file's own path as its weights, a path being used as given).")
    if not allow_hash_mismatch:
        raise WeightsHashError(message)
    warnings.warn(message + " Accepted because allow_hash_mismatch=True.", stacklevel=3)


def cache_dir() -> Path:
    """The Hugging Face hub cache, read at call time (HF_HUB_CACHE, then HF_HOME/hub, then the default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def cached_path(filename: str) -> Path | None:
    """Path of `filename` in the local hub cache, or None."""
    from huggingface_hub import try_to_load_from_cache
    found = try_to_load_from_cache(HF_REPO, filename, cache_dir=cache_dir())
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def hf_download(repo_id: str, filename: str, cache: Path) -> str:
    """Download one file into the hub cache. The only function that touches the network.

    A 5 s probe first makes an unreachable hub fail fast: the download call itself retries
    with back-off for half a minute or more. The transfer honours HF_HUB_DOWNLOAD_TIMEOUT.
    """
    from huggingface_hub import HfApi, hf_hub_download
    HfApi().model_info(repo_id, timeout=5)
    return hf_hub_download(repo_id, filename, cache_dir=cache, etag_timeout=10)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _missing_message(filename: str, reason: str) -> str:
    cache = cache_dir()
    return (f"checkpoint {filename} is not in the local cache and cannot be downloaded ({reason}).\n"
            f"  - download it elsewhere from https://huggingface.co/{HF_REPO} and pass its local path, or\n"
            f"  - put it in the hub cache: {cache}/models--{HF_REPO.replace('/', '--')}/snapshots/<commit>/"
            f"{filename} (e.g. `hf download {HF_REPO} {filename}` on a machine with network, "
            f"then copy the cache folder)"
            + (", or\n  - unset HF_HUB_OFFLINE if you meant to go online." if _offline() else "."))


def resolve_weights(name_or_path: str | Path, *, allow_hash_mismatch: bool = False,
                    download: Callable[[str, str, Path], str] | None = None) -> Path:
    """Turn a local path, a zoo alias, a recipe name or a zoo file name into a local file.

    Args:
        name_or_path: an existing path (returned as is), or e.g. "v2-l-coco", "v2-s-pretrain",
            "yolo_world_v2_l_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco_ep80-81c701ee.pth".
        allow_hash_mismatch: accept (with a warning) a file whose SHA-256 disagrees with its name.
        download: (repo_id, filename, cache_dir) -> local path; defaults to `hf_download`.
            Tests pass a fake to stay offline.
    Returns:
        Path to a verified local file.
    Raises:
        WeightsNotAvailableError: unknown name (`UnknownWeightsError`), or offline / network failure
            (message says where to put the file). WeightsHashError: SHA-256 prefix mismatch.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    key = str(name_or_path)
    table = names()
    if key not in table:
        for e in ZOO:
            if key in (e.alias, e.recipe) and e.finetuned is None:
                raise WeightsNotAvailableError(f"{key}: {e.note}. Its pre-trained start is {e.pretrained}.")
        aliases = sorted(n for n in table if not n.endswith(".pth") and not n.startswith("yolo_world"))
        # a recipe alias (v2-l) names two files: the fine-tuned one (v2-l-coco) and its start (v2-l-pretrain)
        close = ([a for a in aliases if a.startswith(key + "-")]
                 or difflib.get_close_matches(key, aliases, n=2, cutoff=0.88))
        guess = f"did you mean {' or '.join(close)}? " if close else ""
        raise UnknownWeightsError(f"{key}: no such file, and not a zoo name; {guess}Zoo aliases: {', '.join(aliases)} "
                                  f"(`worldtune zoo` lists the files).")
    filename = table[key]
    found = cached_path(filename)
    if found is None:
        if _offline():
            raise WeightsNotAvailableError(_missing_message(filename, "HF_HUB_OFFLINE is set"))
        try:
            found = Path((download or hf_download)(HF_REPO, filename, cache_dir()))
        except Exception as e:  # network stacks raise many types; all mean "not available"
            raise WeightsNotAvailableError(
                _missing_message(filename, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")) from e
    verify_hash(found, filename, allow_hash_mismatch)
    return found
