"""worldtune.outputs: a failed write names its file; an unwritable output place is found by trying it."""
import errno
import os
from pathlib import Path

import pytest

from worldtune import outputs
from worldtune.outputs import OutputWriteError, check_writable, writing


def test_a_write_that_fails_names_its_file_and_keeps_the_cause():
    with pytest.raises(OutputWriteError) as info:
        with writing(Path("out/metrics.json")):
            raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises: no file name
    assert str(info.value) == "cannot write out/metrics.json: No space left on device"
    assert info.value.errno == errno.ENOSPC and isinstance(info.value.__cause__, OSError)
    with pytest.raises(ValueError):  # other errors pass through as they are
        with writing("x"):
            raise ValueError("not a write problem")


def test_a_writable_folder_is_left_as_it_was(tmp_path):
    check_writable(tmp_path / "new" / "run")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a probe file is left


def test_an_unwritable_place_is_named_with_its_cause(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputWriteError,
                       match=r"^cannot create run folder .*file/run: .*file is a file, not a folder$"):
        check_writable(tmp_path / "file" / "run", "run folder")

    def refused(*args, **kwargs):  # root passes permission bits: the probe is a real attempt
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(outputs.tempfile, "TemporaryFile", refused)
    with pytest.raises(OutputWriteError, match=rf"^cannot write output folder {tmp_path}/a/b: Permission denied "
                                               rf"\(in {tmp_path}\)$"):
        check_writable(tmp_path / "a" / "b", "output folder")
    with pytest.raises(OutputWriteError, match=rf"^cannot write folder {tmp_path}: Permission denied$"):
        check_writable(tmp_path)


def test_write_text_replaces_a_file_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "m.json"
    outputs.write_text(path, "[1]")
    assert path.read_text() == "[1]" and oct(path.stat().st_mode & 0o777) == "0o644"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputWriteError, match=rf"^cannot write {path}: No space left on device$"):
        outputs.write_text(path, "[2]")
    monkeypatch.undo()
    assert path.read_text() == "[1]" and os.listdir(path.parent) == ["m.json"]  # no temporary file left


def test_a_durable_file_is_synced_before_and_after_its_rename(tmp_path, monkeypatch):
    """durable=True: the bytes reach the disk before the rename, and the folder's entry after it (a power cut
    after the save keeps the new file, not an empty or missing one); a plain write_text syncs neither."""
    import stat

    path = tmp_path / "last.pt"
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        mode = os.fstat(fd).st_mode
        synced.append(("folder" if stat.S_ISDIR(mode) else "file", path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with outputs.atomic_file(path, durable=True) as f:
        f.write(b"state")
    assert synced == [("file", False), ("folder", True)] and path.read_bytes() == b"state"
    synced.clear()
    outputs.write_text(tmp_path / "m.json", "[]")
    assert synced == []


def test_an_error_already_naming_its_file_is_not_named_again():
    with pytest.raises(OutputWriteError) as info:
        with writing("run/config.yaml"):
            with writing("run/last.pt"):
                raise OSError(errno.ENOSPC, "No space left on device")
    assert str(info.value) == "cannot write run/last.pt: No space left on device"


@pytest.mark.parametrize("code,advice", [
    (errno.ENOSPC, "free some space on the disk of run"), (errno.EDQUOT, "free some space on the disk of run"),
    (errno.EACCES, "make run writable"), (errno.EPERM, "make run writable"), (errno.EROFS, "make run writable"),
    (errno.ENOENT, "restore the folder run"), (errno.EIO, "fix that"),
])
def test_the_remedy_follows_the_cause(code, advice):
    assert outputs.remedy(OSError(code, os.strerror(code)), Path("run")) == advice
