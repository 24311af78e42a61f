"""Safe checkpoint I/O: no code execution on load, official/worldtune layouts, mismatch reports, atomic save."""
import json
import os
import pickle
import subprocess
import sys
import types
import warnings
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from worldtune.engine.checkpoint import (
    CheckpointError,
    CheckpointLoadError,
    CheckpointMismatchError,
    UnpickledObject,
    extract_model_state,
    load_checkpoint_file,
    load_model_state,
    load_weights_into,
    save_checkpoint_atomic,
)


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=g), "conv.bias": torch.randn(4, generator=g)}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class _Payload:
    """Unpickling this would run ``func(*args)``: the classic pickle attack."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _attacks(marker):
    return [
        _Payload(os.system, f"touch {marker}"),
        _Payload(subprocess.call, ["touch", str(marker)]),
        _Payload(eval, f"open({str(marker)!r}, 'w').close()"),
        _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
    ]


@pytest.mark.parametrize("zip_format", [True, False])
@pytest.mark.parametrize("attack", range(4))
def test_malicious_payload_is_not_run_and_weights_stay_readable(tmp_path, attack, zip_format):
    marker = tmp_path / "pwned"
    weights = _weights()
    path = tmp_path / "evil.pth"
    payload = {"state_dict": weights, "meta": {"note": _attacks(marker)[attack]}}
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
    ckpt = load_checkpoint_file(path)
    assert not marker.exists()
    _assert_same(extract_model_state(ckpt), weights)
    inert = ckpt["meta"]["note"]
    assert isinstance(inert, UnpickledObject)
    assert "touch" in str(inert.args) or "open(" in str(inert.args)


def test_whole_file_payload_is_refused_clearly(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_model.pth"
    torch.save(_Payload(os.system, f"touch {marker}"), path)
    with pytest.raises(CheckpointLoadError, match="evil_model.pth.*not a checkpoint dict"):
        load_checkpoint_file(path)
    raw = tmp_path / "raw.pkl"  # a plain pickle, not a torch file at all
    for protocol in (2, 4):  # (4: no torch warning about a protocol it did not write)
        raw.write_bytes(pickle.dumps(_Payload(os.system, f"touch {marker}"), protocol=protocol))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(CheckpointLoadError, match=r"raw.pkl is a plain pickle, not a checkpoint written by "
                                                          r"torch.save; refused \(nothing in it was run\)"):
                load_checkpoint_file(raw)
    assert not marker.exists()


def test_a_compressed_record_that_would_fill_the_memory_is_refused(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(2**23)}, plain)  # 32 MiB of zeros
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():  # the same records, the tensor data deflated (~1000x smaller)
            dst.writestr(info.filename, src.read(info.filename),
                         compress_type=zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED)
    assert bomb.stat().st_size < 2**20
    with pytest.raises(CheckpointLoadError, match=r"bomb.pth: its compressed records would expand to 32 MiB"):
        load_checkpoint_file(bomb)
    assert load_checkpoint_file(plain)["w"].shape == (2**23,)  # the same content, uncompressed, loads


def test_a_file_that_is_no_checkpoint_says_so(tmp_path):
    notes = tmp_path / "texts.txt"
    notes.write_text("person\ncar\n")
    with pytest.raises(CheckpointLoadError, match=r"texts.txt is not a checkpoint: neither a PyTorch file"):
        load_checkpoint_file(notes)
    torch.save({"w": torch.zeros(1)}, tmp_path / "best.pt")
    with pytest.raises(FileNotFoundError, match=r"is a folder; name a file in it, e.g. .*best.pt"):
        load_checkpoint_file(tmp_path)  # a run folder


@pytest.fixture()
def fake_mmengine(monkeypatch):
    """A HistoryBuffer class living in ``mmengine.logging.history_buffer`` only while saving."""
    mods = {name: types.ModuleType(name) for name in
            ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")}

    class HistoryBuffer:
        def __init__(self):
            self._log_history = np.array([0.5, 0.25])
            self._count_history = np.array([1, 1])
            self.max_length = 1000000

    HistoryBuffer.__module__ = "mmengine.logging.history_buffer"
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    mods["mmengine.logging.history_buffer"].HistoryBuffer = HistoryBuffer
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return HistoryBuffer


def _official_checkpoint(history_buffer_cls, ema, raw):
    return {
        "meta": {"epoch": 80, "iter": 7360, "seed": np.int64(20261125), "mmengine_version": "0.10.3",
                 "dataset_meta": {"classes": ("person", "bicycle")}, "lr": np.float64(2e-4),
                 "mean": np.array([0.0, 0.0, 0.0], dtype=np.float32)},
        "state_dict": ema,
        "ema_state_dict": {"steps": torch.tensor(7360), **{"module." + k: v for k, v in raw.items()}},
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(4)}}, "param_groups": [{"lr": 2e-4, "params": [0]}]},
        "message_hub": {"log_scalars": {"train/loss": history_buffer_cls()},
                        "runtime_info": {"epoch": 80, "iter": np.int64(7360)}, "resumed_keys": {}},
    }


def test_fake_mmengine_checkpoint(tmp_path, fake_mmengine, monkeypatch):
    ema, raw = _weights(0), _weights(1)
    path = tmp_path / "epoch_80.pth"
    torch.save(_official_checkpoint(fake_mmengine, ema, raw), path)
    for name in ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer"):
        monkeypatch.delitem(sys.modules, name)  # as on a machine without mmengine
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)

    ckpt = load_checkpoint_file(path)
    buffer = ckpt["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(buffer, UnpickledObject)
    assert buffer.pickled_name == "mmengine.logging.history_buffer.HistoryBuffer"
    np.testing.assert_array_equal(buffer.state["_log_history"], [0.5, 0.25])
    assert ckpt["meta"]["seed"] == 20261125 and ckpt["meta"]["dataset_meta"]["classes"] == ("person", "bicycle")
    np.testing.assert_array_equal(ckpt["meta"]["mean"], np.zeros(3, dtype=np.float32))
    _assert_same(extract_model_state(ckpt), ema)  # mmengine: top-level state_dict holds the EMA
    _assert_same(extract_model_state(ckpt, prefer="model"), raw)  # module. stripped, steps dropped


def test_worldtune_and_bare_layouts():
    model_w, ema_w = _weights(0), _weights(1)
    _assert_same(extract_model_state({"model": model_w, "ema": ema_w, "epoch": 3}), ema_w)
    _assert_same(extract_model_state({"model": model_w, "ema": ema_w}, prefer="model"), model_w)
    _assert_same(extract_model_state({"model": model_w, "ema": None}), model_w)
    _assert_same(extract_model_state({"model": model_w, "ema": {"state_dict": ema_w, "updates": 9}}), ema_w)
    _assert_same(extract_model_state({"module." + k: v for k, v in model_w.items()}), model_w)
    _assert_same(extract_model_state({"state_dict": {"_orig_mod." + k: v for k, v in ema_w.items()}}), ema_w)
    with pytest.raises(CheckpointError, match="no model weights found.*'epoch'"):
        extract_model_state({"epoch": 3, "optimizer": {}})
    with pytest.raises(CheckpointError, match=r"\['model'\].*non-tensor"):
        extract_model_state({"model": {"conv.weight": "oops"}})
    with pytest.raises(ValueError, match="prefer"):
        extract_model_state({"model": model_w}, prefer="best")


def test_prefer_model_falls_back_to_ema_when_only_ema_is_stored():
    # The docstring's fallback: a worldtune checkpoint with EMA weights only still loads with prefer="model".
    ema_w = _weights(1)
    _assert_same(extract_model_state({"ema": ema_w, "epoch": 3}, prefer="model"), ema_w)
    _assert_same(extract_model_state({"model": None, "ema": ema_w}, prefer="model"), ema_w)
    # an mmengine file with its EMA weights (state_dict) only: prefer="model" takes those too
    _assert_same(extract_model_state({"state_dict": ema_w, "meta": {}}, prefer="model"), ema_w)


def test_a_prefix_is_stripped_only_when_every_key_has_it():
    # One key under "module." is not a DistributedDataParallel wrapper: stripping it from every key
    # would cut "b.weight" to "ight", so both keys stay as they are.
    state = {"module.a": torch.zeros(2), "b.weight": torch.ones(3)}
    _assert_same(extract_model_state(state), state)
    _assert_same(extract_model_state({"model": {"_orig_mod.a": torch.zeros(2), "b": torch.ones(1)}}),
                 {"_orig_mod.a": torch.zeros(2), "b": torch.ones(1)})


def test_official_fixture_layout(spec_fixtures):
    ckpt = load_checkpoint_file(spec_fixtures / "parity_s.pt")
    state = extract_model_state(ckpt)
    official = json.loads((spec_fixtures / "official_keys_s.json").read_text())["keys"]
    assert list(state) == [k["name"] for k in official]
    assert sum(k.startswith("backbone.text_model.") for k in state) == 197


class _Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.bn = nn.BatchNorm2d(width)
        self.text = nn.Sequential(*[nn.Linear(2, 2) for _ in range(8)])  # 16 keys


def test_strict_mismatch_report_names_file_and_groups_keys():
    model = _Net()
    state = {k: v for k, v in _Net(width=5).state_dict().items() if not k.startswith("text.")}
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as info:
        load_model_state(model, state, path="runs/exp/best.pth")
    message = str(info.value)
    assert "runs/exp/best.pth" in message
    assert "missing keys (16)" in message and "text.* (16 keys)" in message
    assert "unexpected keys (1)" in message and "extra.weight" in message
    assert "conv.weight: file (5, 3, 3, 3) vs model (4, 3, 3, 3)" in message
    assert "shape mismatches (6)" in message


def test_non_strict_loads_what_matches():
    model = _Net()
    donor = _Net()
    state = dict(donor.state_dict())
    state["bn.weight"] = torch.ones(7)  # wrong shape: skipped
    del state["text.0.weight"]
    state["model.text_model.embeddings.position_ids"] = torch.arange(77)[None]  # dropped silently
    report = load_model_state(model, state, strict=False)
    assert report.missing == ["text.0.weight"] and report.unexpected == []
    assert [m[0] for m in report.mismatched] == ["bn.weight"]
    assert torch.equal(model.conv.weight, donor.conv.weight)
    assert not torch.equal(model.text[0].weight, donor.text[0].weight)
    assert torch.equal(model.bn.weight, torch.ones(4))  # left at its init


def test_strict_load_casts_fp16_and_ignores_position_ids():
    model, donor = _Net(), _Net()
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in donor.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    report = load_model_state(model, state)
    assert report.ok and model.conv.weight.dtype == torch.float32
    assert torch.allclose(model.conv.weight, donor.conv.weight, atol=1e-2)
    # a model whose transformers (< 4.31) saves position_ids loads a file written without them
    model.register_buffer("position_ids", torch.arange(4)[None])
    assert load_model_state(model, donor.state_dict()).ok


def test_atomic_save_roundtrip_and_crash_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "last.pth"
    first = {"model": _weights(0), "epoch": 1}
    save_checkpoint_atomic(first, path)
    _assert_same(load_checkpoint_file(path)["model"], first["model"])

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint_atomic({"model": _weights(1), "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint_file(path)["epoch"] == 1
    assert os.listdir(path.parent) == ["last.pth"]  # no temp file left behind


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_full_disk_while_saving_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch, suffix):
    """A failed write() names no file ("[Errno 28] No space left on device"): the error says which."""
    import errno

    from worldtune.outputs import OutputWriteError

    path = tmp_path / f"last{suffix}"
    save_checkpoint_atomic({"w": torch.zeros(2)}, path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # after the bytes went out, as a real full disk reports it late
    with pytest.raises(OutputWriteError) as info:
        save_checkpoint_atomic({"w": torch.ones(2)}, path)
    monkeypatch.undo()
    assert str(info.value) == f"cannot write {path}: No space left on device"
    assert info.value.errno == errno.ENOSPC and info.value.path == path
    assert os.listdir(tmp_path) == [path.name] and torch.equal(load_checkpoint_file(path)["w"], torch.zeros(2))


def test_safetensors_roundtrip_with_strided_views(tmp_path):
    base = torch.arange(40, dtype=torch.float16)
    weights = {"a": base.as_strided((4, 3), (7, 1)), "b": torch.randn(2, 2)}
    path = save_checkpoint_atomic(weights, tmp_path / "w.safetensors")
    loaded = load_checkpoint_file(path)
    _assert_same(loaded, {k: v.contiguous() for k, v in weights.items()})
    _assert_same(extract_model_state(loaded), loaded)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_unreadable_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint_file(tmp_path / "nope.pth")
    truncated = tmp_path / "truncated.pth"
    save_checkpoint_atomic({"model": _weights()}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointLoadError, match="truncated.pth"):
        load_checkpoint_file(truncated)
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), scripted)
    with pytest.raises(CheckpointLoadError, match="TorchScript"):
        load_checkpoint_file(scripted)


def test_load_weights_into_prefers_ema_and_names_file(tmp_path):
    model, raw, ema = _Net(), _Net(), _Net()
    path = save_checkpoint_atomic({"model": raw.state_dict(), "ema": ema.state_dict(), "epoch": 4}, tmp_path / "c.pth")
    assert load_weights_into(model, path).ok
    assert torch.equal(model.conv.weight, ema.conv.weight)
    load_weights_into(model, path, prefer="model")
    assert torch.equal(model.conv.weight, raw.conv.weight)
    with pytest.raises(CheckpointMismatchError, match="c.pth"):
        load_weights_into(_Net(width=6), path)
    bad = save_checkpoint_atomic({"epoch": 4}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="bad.pth.*no model weights"):
        load_weights_into(model, bad)


def _build_on_global(module: str, name: str, attr: str, value: bytes) -> bytes:
    """Protocol-2 pickle: push the global module.name, then BUILD (None, {attr: value}) on it,
    i.e. setattr(global, attr, value): an attempt to change a shared object for the whole process."""
    key = attr.encode()
    return (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"N}X" + len(key).to_bytes(4, "little") + key
            + value + b"s\x86b.")


@pytest.mark.parametrize("module,name,attr,value,original", [
    ("collections", "Counter", "most_common", b"K\x01", lambda: __import__("collections").Counter.most_common),
    ("torch._utils", "_rebuild_tensor_v2", "__defaults__", b"K\x01\x85",
     lambda: torch._utils._rebuild_tensor_v2.__defaults__),
    ("torch", "Tensor", "add", b"K\x01", lambda: torch.Tensor.add),
])
def test_a_file_cannot_change_shared_objects(module, name, attr, value, original):
    import io

    from worldtune.engine.safe_pickle import RESTRICTED_PICKLE

    before = original()
    try:
        RESTRICTED_PICKLE.load(io.BytesIO(_build_on_global(module, name, attr, value)))
    except (pickle.UnpicklingError, AttributeError, TypeError):
        pass  # refused outright is fine too
    assert original() is before


def test_a_file_cannot_make_the_loader_allocate_at_will():
    import io

    from worldtune.engine.safe_pickle import RESTRICTED_PICKLE

    huge = b"\x80\x02c" + b"builtins\nbytearray\n" + b"J\xff\xff\xff\x7f\x85R."  # bytearray(2**31 - 1)
    with pytest.raises(pickle.UnpicklingError, match="bytearray"):
        RESTRICTED_PICKLE.load(io.BytesIO(huge))
    assert RESTRICTED_PICKLE.load(io.BytesIO(pickle.dumps(bytearray(b"ab"), protocol=4))) == bytearray(b"ab")


def test_a_checkpoint_cut_short_is_called_so(tmp_path):
    # Before: "is not a checkpoint: neither a PyTorch file nor safetensors", for a PyTorch file.
    truncated = tmp_path / "half.pt"
    save_checkpoint_atomic({"model": _weights()}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:len(truncated.read_bytes()) // 2])
    with pytest.raises(CheckpointLoadError, match=r"half.pt is a PyTorch checkpoint cut short"):
        load_checkpoint_file(truncated)


@pytest.mark.parametrize("entry, value, message", [
    ("config", "notadict", r"'config' entry must be a dict"),
    ("config", {"model": [1]}, r"'config.model' entry must be a dict"),
    ("config", {"data": {"imgsz": "big"}}, r"'config.data.imgsz' entry must be a positive multiple of 32"),
    ("config", {"model": {"variant": 5}}, r"'config.model.variant' entry must be a variant name"),
    ("vocabulary", 5, r"'vocabulary' entry must be a list of non-empty class texts"),
    ("vocabulary", ["a", ""], r"'vocabulary' entry must be a list of non-empty class texts"),
    ("text_tower", {"num_heads": "8"}, r"'text_tower' entry must be a dict"),
])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_malformed_run_information_names_the_file_and_entry(tmp_path, entry, value, message, suffix):
    # Before: an AttributeError or TypeError in the loaders, or (imgsz) deep in predict.
    path = tmp_path / f"run{suffix}"
    if suffix == ".pt":
        torch.save({"format": "worldtune-1", "ema": _weights(), entry: value}, path)
    else:
        save_checkpoint_atomic(_weights(), path, metadata={"worldtune": json.dumps({entry: value})})
    with pytest.raises(CheckpointLoadError, match=rf"run{suffix}: its " + message):
        load_checkpoint_file(path)


def test_weights_problems_name_the_file_and_empty_weights_are_refused(tmp_path):
    # Before: messages without the file, and an empty state_dict "loaded" (slim wrote a file of nothing).
    with pytest.raises(CheckpointError, match=r"^w.pt: checkpoint entry \['state_dict'\] has non-tensor"):
        extract_model_state({"state_dict": {"a": "b"}}, source="w.pt")
    with pytest.raises(CheckpointError, match=r"^w.pt: the checkpoint holds no weights"):
        extract_model_state({"state_dict": {}}, source="w.pt")


def test_mapped_load_reads_only_the_tensors_used(tmp_path):
    """mmap=True (eval, predict, slim, start weights): a training checkpoint's optimizer state is
    never read into memory when only its EMA weights are taken out and copied."""
    from tests.helpers.memory import peak_since_reset, reset_peak

    path = tmp_path / "last.pt"
    ema = torch.arange(2**20, dtype=torch.float32)  # 4 MiB
    torch.save({"ema": {"w": ema}, "optimizer": {"state": {0: {"exp_avg": torch.ones(2**25)}}}}, path)  # 128 MiB
    for mmap, most in ((True, 48 * 2**20), (False, None)):
        start = reset_peak()
        ckpt = load_checkpoint_file(path, mmap=mmap)
        copied = extract_model_state(ckpt)["w"].clone()
        grown = peak_since_reset() - start
        del ckpt
        assert torch.equal(copied, ema)
        if most is not None:
            assert grown < most, f"mapped load grew the process by {grown / 2**20:.0f} MiB"
        else:  # the plain load reads everything: shows the measurement sees the optimizer state
            assert grown > 100 * 2**20


def test_mapped_load_of_a_zip_with_compressed_records_reads_them(tmp_path):
    """A file re-zipped with compression (by a zip tool) cannot be mapped record by record: read as usual."""
    plain = tmp_path / "plain.pth"
    weights = {"w": torch.arange(1000, dtype=torch.float32)}
    torch.save(weights, plain)
    packed = tmp_path / "packed.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename),
                         compress_type=zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED)
    assert torch.equal(load_checkpoint_file(packed, mmap=True)["w"], weights["w"])
    assert torch.equal(load_checkpoint_file(plain, mmap=True)["w"], weights["w"])
