"""Safe checkpoint I/O: load without executing pickled code, pick the model weights, load with a
readable mismatch report, save atomically.

Layouts understood by :func:`extract_model_state`:

* official mmengine files: ``state_dict`` (EMA weights), ``ema_state_dict`` (raw weights, keys prefixed
  ``module.``, plus ``steps``), ``meta``, ``optimizer``, ``message_hub`` (pickled mmengine objects);
* worldtune files: ``model``, ``ema``, ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``config``;
* a bare state_dict (``.pth`` or ``.safetensors``).
"""
from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from worldtune.engine.safe_pickle import RESTRICTED_PICKLE, UnpickledObject  # noqa: F401 (UnpickledObject: public)
from worldtune.jsonfile import is_int
from worldtune.outputs import atomic_file


class CheckpointError(RuntimeError):
    """Base class of checkpoint problems; messages always name the file."""


class CheckpointLoadError(CheckpointError):
    """The file cannot be read (corrupt, unsupported, or unsafe to read)."""


class CheckpointMismatchError(CheckpointError):
    """The weights do not fit the model (missing / unexpected keys, shape mismatches)."""


# ----------------------------------------------------------------------------- loading
MAX_EXPANSION_SLACK = 16 * 2**20  # bytes a zip checkpoint may expand beyond twice its file size
WEIGHTS_METADATA_KEY = "worldtune"  # safetensors metadata entry of a `worldtune slim` file (JSON)
# A slim file without its text tower stores its class texts' (K, D) embeddings under this tensor
# name, which no model key starts with; reading the file moves it to the "vocabulary_feats" entry.
VOCAB_FEATS_KEY = "worldtune.vocabulary_feats"


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    # safetensors layout: u64 little-endian header length, then a JSON header starting with '{'
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def _load_safetensors(path: Path) -> dict:
    """name -> tensor; for a `worldtune slim` file, {"ema": name -> tensor, plus its metadata:
    config, vocabulary, text_tower, ..., and "vocabulary_feats" (K, D) when stored}, the shape of a
    training checkpoint's inference part."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
            metadata = f.metadata() or {}
    except Exception as err:  # noqa: BLE001
        raise CheckpointLoadError(f"cannot read safetensors file {path}: {err}") from err
    if WEIGHTS_METADATA_KEY not in metadata:
        return tensors
    try:
        meta = json.loads(metadata[WEIGHTS_METADATA_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointLoadError(f"{path}: malformed '{WEIGHTS_METADATA_KEY}' metadata: {err}") from err
    if not isinstance(meta, dict):
        raise CheckpointLoadError(f"{path}: '{WEIGHTS_METADATA_KEY}' metadata must be a JSON object")
    info = {k: v for k, v in meta.items() if k not in ("ema", "vocabulary_feats")}
    if VOCAB_FEATS_KEY in tensors:
        info["vocabulary_feats"] = tensors.pop(VOCAB_FEATS_KEY)
    return _checked_run_info({**info, "ema": tensors}, path)


def stored_vocabulary(path: str | Path) -> list[str] | None:
    """The class texts whose embeddings the slim file `path` stores, read from its header alone
    (no tensor is read); None for any other file, or a name that is no file (a zoo name)."""
    path = Path(path).expanduser()
    try:
        if not path.is_file() or not _is_safetensors(path):
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            if VOCAB_FEATS_KEY not in f.keys():
                return None
            vocabulary = json.loads((f.metadata() or {}).get(WEIGHTS_METADATA_KEY, "{}")).get("vocabulary")
    except Exception:  # noqa: BLE001 - unreadable: loading it names the problem
        return None
    return vocabulary if isinstance(vocabulary, list) else None


def load_checkpoint_file(path: str | Path, mmap: bool = False) -> dict:
    """Read a ``.pth``/``.pt``/``.safetensors`` file onto the CPU without running code from it.

    ``torch.load(weights_only=True)`` is tried first. If it refuses unknown globals (mmengine's
    ``message_hub``, numpy objects, ...), the file is read again with a restricted unpickler that
    only rebuilds tensors and plain containers and replaces every other class or function by an
    inert :class:`UnpickledObject` (never calling it).

    ``mmap``: map a PyTorch (zip) file instead of reading it, so that only the tensors used are read
    into memory: taking the EMA weights out of a training checkpoint then leaves its optimizer state
    and raw weights (over half of an L checkpoint's gigabyte) on disk. The tensors are copy-on-write
    views of the file, meant to be copied into a model and dropped.

    Returns:
        The checkpoint dict (for safetensors: name -> tensor).
    Raises:
        FileNotFoundError, CheckpointLoadError (naming the file).
    """
    path = Path(path)
    if path.is_dir():
        found = [name for name in ("best.pt", "last.pt") if (path / name).is_file()]
        raise FileNotFoundError(f"checkpoint {path} is a folder; name a file in it"
                                + (f", e.g. {path / found[0]}" if found else ""))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if _is_safetensors(path):
        return _load_safetensors(path)
    is_zip = zipfile.is_zipfile(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if not is_zip and head.startswith(b"PK\x03\x04"):  # a zip (torch.save's format) without its directory
        raise CheckpointLoadError(f"{path} is a PyTorch checkpoint cut short: its zip directory is missing "
                                  "(an interrupted download or copy?); fetch or copy it again")
    if not is_zip and head[:1] != b"\x80":  # a pickle (PyTorch's pre-1.6 format) opens with PROTO
        raise CheckpointLoadError(f"{path} is not a checkpoint: neither a PyTorch file (.pt/.pth) nor safetensors "
                                  f"(it starts with {head!r})")
    if is_zip:
        with zipfile.ZipFile(path) as archive:
            if any(n.endswith("constants.pkl") for n in archive.namelist()):
                raise CheckpointLoadError(f"{path} is a TorchScript archive, not a checkpoint; refusing to run it")
            # torch allocates each record's declared size and inflates it: a small file of compressed
            # zeros could fill the memory. torch.save never compresses, so real files expand ~1x.
            expanded, size = sum(info.file_size for info in archive.infolist()), path.stat().st_size
            if expanded > 2 * size + MAX_EXPANSION_SLACK:
                raise CheckpointLoadError(
                    f"{path}: its compressed records would expand to {expanded / 2**20:.0f} MiB from a "
                    f"{size / 2**20:.1f} MiB file; refusing to read it (torch.save writes uncompressed records)")
            # Mapping reads each record's bytes in place: a zip tool's compressed records need reading.
            mmap = mmap and all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it did not write: the error says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError:
        # Unknown globals: fall through to the restricted reader.
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=RESTRICTED_PICKLE,
                             mmap=mmap and is_zip)
        except Exception as err:  # noqa: BLE001
            if not is_zip and "magic number" in str(err):  # not torch's legacy layout either
                raise CheckpointLoadError(f"{path} is a plain pickle, not a checkpoint written by torch.save; "
                                          "refused (nothing in it was run)") from err
            raise CheckpointLoadError(f"cannot read {path} safely: {type(err).__name__}: {err}") from err
    except Exception as err:  # noqa: BLE001 - truncated / not a torch file
        raise CheckpointLoadError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(obj, Mapping):
        raise CheckpointLoadError(
            f"{path} holds a {getattr(obj, 'pickled_name', type(obj).__name__)} object, not a checkpoint dict "
            f"or state_dict (whole pickled models are not loaded, because that would run code from the file)"
        )
    return _checked_run_info(dict(obj), path)


def _checked_run_info(checkpoint: dict, path: Path) -> dict:
    """Check the run information a worldtune file carries besides its weights (config, vocabulary,
    text tower shape), which the loaders read without further checks: a hand-edited or crafted file
    gets a message naming the file and the entry, not an AttributeError or TypeError later."""
    def bad(entry: str, expected: str, value) -> CheckpointLoadError:
        return CheckpointLoadError(f"{path}: its '{entry}' entry must be {expected}, got {str(value)[:80]}")

    config = checkpoint.get("config")
    if config is not None:
        if not isinstance(config, dict):
            raise bad("config", "a dict", config)
        for section in ("model", "data"):
            if not isinstance(config.get(section, {}), dict):
                raise bad(f"config.{section}", "a dict", config[section])
        variant = config.get("model", {}).get("variant")
        if variant is not None and not isinstance(variant, str):
            raise bad("config.model.variant", "a variant name", variant)
        imgsz = config.get("data", {}).get("imgsz")
        if imgsz is not None and not (is_int(imgsz) and imgsz > 0 and imgsz % 32 == 0):
            raise bad("config.data.imgsz", "a positive multiple of 32", imgsz)
    vocabulary = checkpoint.get("vocabulary")
    if vocabulary is not None and not (isinstance(vocabulary, list)
                                       and all(isinstance(t, str) and t.strip() for t in vocabulary)):
        raise bad("vocabulary", "a list of non-empty class texts", vocabulary)
    category_ids = checkpoint.get("category_ids")
    if category_ids is not None and not (isinstance(category_ids, list) and all(is_int(c) for c in category_ids)
                                         and vocabulary is not None and len(category_ids) == len(vocabulary)):
        raise bad("category_ids", f"a list of {len(vocabulary or [])} integer ids, one per class text of "
                  "'vocabulary'", category_ids)
    tower = checkpoint.get("text_tower")
    if tower is not None:
        heads = tower.get("num_heads") if isinstance(tower, dict) else None
        if not isinstance(tower, dict) or not (heads is None or (is_int(heads) and heads > 0)):
            raise bad("text_tower", "a dict with a positive integer 'num_heads'", tower)
    feats = checkpoint.get("vocabulary_feats")
    if feats is not None and not (isinstance(feats, Tensor) and feats.is_floating_point() and feats.ndim == 2
                                  and vocabulary is not None and feats.shape[0] == len(vocabulary)):
        shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
        raise bad("vocabulary_feats", f"float embeddings of shape ({len(vocabulary or [])}, D), one row per "
                  "class text of 'vocabulary'", shape)
    return checkpoint


# ----------------------------------------------------------------------------- picking the weights
def _strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _as_state_dict(obj, where: str) -> dict[str, Tensor]:
    # worldtune's "ema" entry may be {"state_dict": ..., "updates": n} or the EMA model's state_dict.
    if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        for key in ("state_dict", "module", "model"):
            if isinstance(obj.get(key), Mapping):
                return _as_state_dict(obj[key], f"{where}['{key}']")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint entry {where} is a {type(obj).__name__}, not a state_dict")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint entry {where} has non-tensor values for keys {bad[:5]}")
    state = _strip_prefix(obj, "module.")  # DistributedDataParallel / mmengine EMA wrapper
    return _strip_prefix(state, "_orig_mod.")  # torch.compile wrapper


def extract_model_state(checkpoint: Mapping, prefer: str = "ema",
                        source: str | Path | None = None) -> dict[str, Tensor]:
    """Pick the model weights out of a loaded checkpoint.

    Args:
        checkpoint: what :func:`load_checkpoint_file` returned.
        prefer: ``"ema"`` (averaged weights, what the official code evaluates) or ``"model"`` (raw
            training weights). Falls back to the other when only one is stored.
        source: the file it came from, named in the error messages.
    Returns:
        name -> tensor, with ``module.`` / ``_orig_mod.`` prefixes removed.
    Raises:
        CheckpointError when no weights are found or they hold something else than tensors.
    """
    try:
        state = _extract_model_state(checkpoint, prefer)
        if not state:  # e.g. a slim file of nothing: it would "load" as a model of random weights
            raise CheckpointError("the checkpoint holds no weights (an empty state_dict)")
    except CheckpointError as err:
        if source is None:
            raise
        raise type(err)(f"{source}: {err}") from None
    return state


def _extract_model_state(checkpoint: Mapping, prefer: str) -> dict[str, Tensor]:
    if prefer not in ("ema", "model"):
        raise ValueError(f"prefer must be 'ema' or 'model', got {prefer!r}")
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(checkpoint).__name__}")
    if checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values()):
        return _as_state_dict(checkpoint, "<bare state_dict>")
    if "model" in checkpoint or "ema" in checkpoint:  # worldtune
        use_ema = checkpoint.get("ema") is not None and (prefer == "ema" or checkpoint.get("model") is None)
        key = "ema" if use_ema else "model"
        return _as_state_dict(checkpoint[key], f"['{key}']")
    if "state_dict" in checkpoint or "ema_state_dict" in checkpoint:  # mmengine: state_dict holds the EMA
        raw = checkpoint.get("ema_state_dict")
        if (prefer == "model" and raw is not None) or checkpoint.get("state_dict") is None:
            raw = {k: v for k, v in raw.items() if k != "steps"}  # EMA update counter, not a weight
            return _as_state_dict(raw, "['ema_state_dict']")
        return _as_state_dict(checkpoint["state_dict"], "['state_dict']")
    raise CheckpointError(
        f"no model weights found: expected 'state_dict', 'model' or 'ema' among the top-level keys "
        f"{sorted(map(str, checkpoint))[:10]}"
    )


# ----------------------------------------------------------------------------- loading into a model
def _is_position_ids(key: str) -> bool:
    # HF CLIP's embeddings.position_ids: saved by transformers < 4.31, non-persistent since.
    return key.endswith("position_ids")


def _summarise_keys(keys: list[str], universe: list[str], max_lines: int = 12) -> list[str]:
    """Shorten a long key list: ``prefix.* (n keys)`` for every module whose keys are all listed."""
    if len(keys) <= max_lines:
        return list(keys)

    def prefixes(key: str) -> list[str]:
        parts = key.split(".")
        return [".".join(parts[:i]) for i in range(1, len(parts))]

    total = Counter(p for k in universe for p in prefixes(k))
    listed = Counter(p for k in keys for p in prefixes(k))
    groups: dict[str, int] = {}
    for key in keys:
        whole = [p for p in prefixes(key) if listed[p] > 1 and listed[p] == total[p]]
        name = whole[0] if whole else key  # shallowest module that is entirely listed
        groups[name] = groups.get(name, 0) + 1
    if len(groups) > max_lines:  # still long: group by the first two name components
        groups = {}
        for key in keys:
            name = ".".join(key.split(".")[:2])
            groups[name] = groups.get(name, 0) + 1
    lines = [f"{name}.* ({n} keys)" if n > 1 else (name if name in keys else f"{name}.* (1 key)")
             for name, n in groups.items()]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... and {len(lines) - max_lines} more groups"]
    return lines


def shape_mismatch(key: str, file_shape, model_shape) -> str:
    """One shape mismatch as the load reports state it: "key: file (a, b) vs model (c, d)"."""
    return f"{key}: file {tuple(file_shape)} vs model {tuple(model_shape)}"


@dataclass
class LoadReport:
    """What :func:`load_model_state` found. ``mismatched`` rows: (key, checkpoint shape, model shape)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    loaded: int = 0
    model_keys: list[str] = field(default_factory=list, repr=False)
    checkpoint_keys: list[str] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def message(self, path: str | Path | None = None, header: str | None = None) -> str:
        source = f"checkpoint {path}" if path is not None else "the state_dict"
        lines = [header or f"{source} does not match the model ({self.loaded} tensors fit):"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}), in the model but not in the file:")
            lines += [f"    {s}" for s in _summarise_keys(self.missing, self.model_keys)]
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}), in the file but not in the model:")
            lines += [f"    {s}" for s in _summarise_keys(self.unexpected, self.checkpoint_keys)]
        if self.mismatched:
            lines.append(f"  shape mismatches ({len(self.mismatched)}):")
            lines += [f"    {shape_mismatch(*row)}" for row in self.mismatched[:12]]
            if len(self.mismatched) > 12:
                lines.append(f"    ... and {len(self.mismatched) - 12} more")
        return "\n".join(lines)


def load_model_state(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, strict: bool = True, path: str | Path | None = None
) -> LoadReport:
    """Copy ``state_dict`` into ``model`` (values are cast to the model's dtypes).

    A ``position_ids`` key (old transformers) is dropped silently, and a missing one ignored.
    With ``strict=True`` any missing / unexpected key or shape mismatch raises
    :class:`CheckpointMismatchError` before anything is copied; with ``strict=False`` the matching
    tensors are loaded and the rest is reported.

    Returns:
        LoadReport listing missing, unexpected and shape-mismatched keys.
    """
    model_state = model.state_dict()
    state = {k: v for k, v in state_dict.items() if not (_is_position_ids(k) and k not in model_state)}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        where = f" in {path}" if path is not None else ""
        raise CheckpointError(f"state_dict{where} has non-tensor values for keys {bad[:5]}")
    report = LoadReport(model_keys=list(model_state), checkpoint_keys=list(state))
    report.missing = [k for k in model_state if k not in state and not _is_position_ids(k)]
    report.unexpected = [k for k in state if k not in model_state]
    to_load = {}
    for key, value in state.items():
        if key not in model_state:
            continue
        if value.shape != model_state[key].shape:
            report.mismatched.append((key, tuple(value.shape), tuple(model_state[key].shape)))
        else:
            to_load[key] = value
    report.loaded = len(to_load)
    if strict and not report.ok:
        raise CheckpointMismatchError(report.message(path))
    model.load_state_dict(to_load, strict=False)
    return report


def load_weights_into(
    model: nn.Module, path: str | Path, *, prefer: str = "ema", strict: bool = True
) -> LoadReport:
    """``load_checkpoint_file`` + ``extract_model_state`` + ``load_model_state`` in one call."""
    checkpoint = load_checkpoint_file(path)
    try:
        state = extract_model_state(checkpoint, prefer=prefer)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    return load_model_state(model, state, strict=strict, path=path)


# ----------------------------------------------------------------------------- saving
def _dense(t: Tensor) -> Tensor:
    t = t.detach().cpu()
    if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.contiguous().clone()  # safetensors wants owned, dense, unshared memory


def save_checkpoint_atomic(obj, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Save ``obj`` to ``path`` so that a crash never leaves a half-written file there.

    Writes to a temporary file in the same folder, fsyncs it, then ``os.replace``s it over ``path``
    (atomic on POSIX and Windows); on failure the temporary file is removed and an OutputWriteError
    names ``path`` and the cause. ``.safetensors`` paths take a flat name -> tensor dict (and
    string `metadata`); anything else goes through ``torch.save``.
    """
    path = Path(path)
    with atomic_file(path, durable=True) as f:
        if path.suffix == ".safetensors":
            from safetensors.torch import save

            f.write(save({k: _dense(v) for k, v in obj.items()}, metadata=metadata))
        else:
            torch.save(obj, f)
    return path
