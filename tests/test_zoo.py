"""Model zoo: name resolution, the hub cache, SHA-256 verification, offline messages. No network."""
import hashlib
import pytest

from worldtune import zoo
from worldtune.cli import main

REPO_FOLDER = "models--" + zoo.HF_REPO.replace("/", "--")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def put_in_cache(cache, filename, payload: bytes, commit="0123456789abcdef0123456789abcdef01234567"):
    """Lay a file out the way huggingface_hub's cache stores it (refs/main -> snapshots/<commit>/)."""
    repo = cache / REPO_FOLDER
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    target = repo / "snapshots" / commit / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(payload)
    return target


def fake_entry(payload: bytes, name_stem="fake_model_ep1"):
    """A zoo row whose fine-tuned file name carries the real hash prefix of `payload`."""
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    filename = f"{name_stem}-{prefix}.pth"
    return zoo.ZooEntry("fake_recipe", "s", "fake-coco", filename, zoo.PRETRAINED["v2-s-pretrain"],
                        1.0, 2.0, 3.0, 4.0)


def no_download(*args):
    raise AssertionError("download must not be called")


def test_table_covers_every_published_row():
    recipes = {e.recipe for e in zoo.ZOO}
    for size in "smlx":
        assert f"yolo_world_v2_{size}_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco" in recipes
    assert "yolo_world_v2_l_vlpan_bn_sgd_1e-3_40e_8gpus_finetune_coco" in recipes
    for e in zoo.ZOO:
        assert e.pretrained in zoo.PRETRAINED.values()
        if e.finetuned:
            assert zoo.expected_sha256_prefix(e.finetuned) is not None and e.ap is not None
    suffixes = {zoo.expected_sha256_prefix(e.finetuned) for e in zoo.ZOO if e.finetuned}
    assert suffixes == {"492dc329", "69c27ac7", "81c701ee", "76bc0cbd", "e1288152"}


def test_names_and_aliases_resolve_to_the_same_file():
    table = zoo.names()
    large = "yolo_world_v2_l_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco_ep80-81c701ee.pth"
    assert table["v2-l-coco"] == table[large] == large
    assert table["yolo_world_v2_l_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco"] == large
    assert table["v2-l-pretrain"] == "yolo_world_v2_l_obj365v1_goldg_cc3mlite_pretrain-ca93cd1f.pth"
    # the released SGD file says 40e (the recipe) but _ep80 (REFERENCE.md §1.3; the official README's link)
    assert table["v2-l-sgd-coco"] == "yolo_world_v2_l_vlpan_bn_sgd_1e-3_40e_8gpus_finetune_coco_ep80-e1288152.pth"


def test_existing_path_is_returned_as_is(tmp_path):
    f = tmp_path / "mine-deadbeef.pth"  # suffix that does not match: local paths are not checked
    f.write_bytes(b"x")
    assert zoo.resolve_weights(f, download=no_download) == f
    assert zoo.resolve_weights(str(f), download=no_download) == f


def test_cache_hit_is_used_without_download(hub_cache, monkeypatch):
    payload = b"cached weights"
    entry = fake_entry(payload)
    monkeypatch.setattr(zoo, "ZOO", zoo.ZOO + (entry,))
    target = put_in_cache(hub_cache, entry.finetuned, payload)
    assert zoo.resolve_weights("fake-coco", download=no_download) == target
    assert zoo.resolve_weights(entry.finetuned, download=no_download) == target
    assert zoo.cached_path(entry.finetuned) == target


def test_the_cache_under_hf_home_is_found_without_download(tmp_path, monkeypatch):
    """Without HF_HUB_CACHE, huggingface_hub keeps its cache in $HF_HOME/hub: look there, as it does."""
    payload = b"cached weights"
    entry = fake_entry(payload)
    monkeypatch.setattr(zoo, "ZOO", zoo.ZOO + (entry,))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    target = put_in_cache(tmp_path / "hf" / "hub", entry.finetuned, payload)
    assert zoo.resolve_weights("fake-coco", download=no_download) == target


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_every_spelling_of_hf_hub_offline_is_honoured(hub_cache, monkeypatch, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    with pytest.raises(zoo.WeightsNotAvailableError, match="HF_HUB_OFFLINE is set"):
        zoo.resolve_weights("v2-s-coco", download=no_download)


def test_download_then_hash_verification(hub_cache, monkeypatch):
    payload = b"downloaded weights"
    entry = fake_entry(payload)
    monkeypatch.setattr(zoo, "ZOO", zoo.ZOO + (entry,))
    calls = []

    def fake_download(repo_id, filename, cache):
        calls.append((repo_id, filename))
        return str(put_in_cache(cache, filename, payload))

    path = zoo.resolve_weights("fake-coco", download=fake_download)
    assert path.read_bytes() == payload and calls == [(zoo.HF_REPO, entry.finetuned)]


def test_tampered_file_is_refused_unless_overridden(hub_cache, monkeypatch):
    entry = fake_entry(b"the real weights")
    monkeypatch.setattr(zoo, "ZOO", zoo.ZOO + (entry,))
    put_in_cache(hub_cache, entry.finetuned, b"tampered weights")
    with pytest.raises(zoo.WeightsHashError, match="promises " + zoo.expected_sha256_prefix(entry.finetuned)):
        zoo.resolve_weights("fake-coco", download=no_download)
    with pytest.warns(UserWarning, match="allow_hash_mismatch"):
        path = zoo.resolve_weights("fake-coco", allow_hash_mismatch=True, download=no_download)
    assert path.read_bytes() == b"tampered weights"


def test_hash_message_gives_a_way_for_the_commands_without_the_flag(hub_cache, monkeypatch):
    # train, predict and export have no --allow-hash-mismatch: the message must not send them to it alone
    entry = fake_entry(b"the real weights")
    monkeypatch.setattr(zoo, "ZOO", zoo.ZOO + (entry,))
    target = put_in_cache(hub_cache, entry.finetuned, b"re-uploaded weights")
    with pytest.raises(zoo.WeightsHashError, match="file's own path as its weights") as info:
        zoo.resolve_weights("fake-coco", download=no_download)
    assert str(target) in str(info.value)
    assert zoo.resolve_weights(str(target), download=no_download) == target  # that path is taken as given


def test_offline_message_names_file_and_cache(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(zoo.WeightsNotAvailableError) as info:
        zoo.resolve_weights("v2-s-coco", download=no_download)
    text = str(info.value)
    assert "ep80-492dc329.pth" in text and str(hub_cache) in text and "local path" in text


def test_network_error_becomes_a_clear_message(hub_cache):
    def failing_download(repo_id, filename, cache):
        raise ConnectionError("Name or service not known")

    with pytest.raises(zoo.WeightsNotAvailableError, match=r"(?s)pretrain-c6237d5b\.pth.*ConnectionError"):
        zoo.resolve_weights("v2-m-pretrain", download=failing_download)


def test_unknown_and_unreleased_names():
    with pytest.raises(zoo.WeightsNotAvailableError, match="not a zoo name.*v2-l-coco"):
        zoo.resolve_weights("v2-q-coco", download=no_download)
    with pytest.raises(zoo.WeightsNotAvailableError, match="no fine-tuned file released"):
        zoo.resolve_weights("v2-l-efficient-neck-coco", download=no_download)


@pytest.mark.parametrize("name, guess", [
    ("v2-l", "did you mean v2-l-coco or v2-l-pretrain or v2-l-sgd-coco? "),  # the recipe alias, not a file
    ("v2-s-cooc", "did you mean v2-s-coco? "),
    ("v2-m-pretrained", "did you mean v2-m-pretrain? "),
    ("model.pth", ""),                                      # a missing file: no guess
])
def test_an_unknown_name_names_the_close_aliases(name, guess):
    with pytest.raises(zoo.UnknownWeightsError) as info:
        zoo.resolve_weights(name, download=no_download)
    assert str(info.value).startswith(f"{name}: no such file, and not a zoo name; {guess}Zoo aliases: v2-l-coco, ")


def test_only_a_hash_right_before_the_suffix_is_a_promise():
    assert zoo.expected_sha256_prefix("yolo_world_v2_l_ep80-81c701ee.pth") == "81c701ee"
    # renamed or other files: no 8 hex digits between the last '-' and the suffix, nothing to check
    for name in ("mine-81c701ee-copy.pth", "run-0123456789.pth", "weights-81c701ee.pth.bak", "best.pt"):
        assert zoo.expected_sha256_prefix(name) is None, name


def test_an_unknown_name_is_told_the_aliases_not_every_file_name():
    with pytest.raises(zoo.UnknownWeightsError) as info:
        zoo.resolve_weights("v2-q-coco", download=no_download)
    aliases = str(info.value).split("Zoo aliases: ")[1].split(" (")[0].split(", ")
    assert aliases == sorted(set(zoo.PRETRAINED) | {e.alias for e in zoo.ZOO if e.finetuned})


def test_zoo_cli_marks_cached_files(hub_cache, capsys):
    put_in_cache(hub_cache, zoo.PRETRAINED["v2-s-pretrain"], b"not checked by the listing")
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert "v2-l-sgd-coco" in out and "53.9" in out and "not released" in out
    cached_lines = [line for line in out.splitlines() if "[cached]" in line]
    assert len(cached_lines) == 1 and "v2-s-pretrain" in cached_lines[0]


def test_zoo_cli_get_reports_offline_cleanly(hub_cache, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["zoo", "--get", "v2-x-coco"]) == 1
    assert "ep80-76bc0cbd.pth" in capsys.readouterr().err


def test_zoo_cli_get_refuses_an_unknown_name_as_a_usage_error(hub_cache, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["zoo", "--get", "v2-q-coco"]) == 2  # a bad argument; 1 is for a file it could not get
    assert "not a zoo name" in capsys.readouterr().err
    assert main(["zoo", "--get", "v2-l-efficient-neck-coco"]) == 1  # a known name without a released file


def test_unreachable_hub_fails_at_the_probe_without_download_retries(monkeypatch):
    import huggingface_hub

    from worldtune import zoo

    calls = []

    def unreachable(self, repo_id, timeout=None, **kwargs):
        calls.append(timeout)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("download attempted"))
    monkeypatch.setattr(zoo, "cached_path", lambda filename: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(zoo.WeightsNotAvailableError, match="ConnectionError"):
        zoo.resolve_weights("v2-s-coco")
    assert calls == [5]
