"""CLIPTextEncoder: tokenisation, official key names, parity with the official fixture, cache, errors."""
import copy
import json

import pytest
import torch

from tests.helpers.clip_factory import make_clip_text_folder
from worldtune.model.text_encoder import CLIPTextEncoder, TextModelUnavailableError

PREFIX = "backbone.text_model."


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_clip_text_folder(tmp_path_factory.mktemp("clip_tiny"), hidden=32, layers=2, heads=2)


@pytest.fixture(scope="module")
def tiny_loaded(tiny_folder):
    return CLIPTextEncoder.from_pretrained(str(tiny_folder))


@pytest.fixture()
def tiny(tiny_loaded):
    """A fresh tiny encoder per test (the tokenizer is stateless, so it is shared)."""
    return CLIPTextEncoder(copy.deepcopy(tiny_loaded.model), tiny_loaded.tokenizer, name="tiny")


@pytest.fixture(scope="module")
def parity(spec_fixtures):
    return torch.load(spec_fixtures / "parity_s.pt", weights_only=True)


@pytest.fixture(scope="module")
def official_encoder(tiny_folder, parity):
    """Full-size tower with the fixture's text weights (stored fp16, run in fp32 like the reference)."""
    encoder = CLIPTextEncoder.from_config(tokenizer_dir=str(tiny_folder))
    state = {k[len(PREFIX):]: v.float() for k, v in parity["state_dict"].items() if k.startswith(PREFIX)}
    encoder.load_state_dict(state, strict=True)
    return encoder


def _flat(texts):
    return [t for per_image in texts for t in per_image]


def _count_tower_calls(encoder):
    calls = []
    encoder.model.text_model.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_tokenizer_matches_official_token_ids(tiny, parity):
    for texts, ids, mask in [
        (parity["texts"], parity["token_ids"], parity["attention_mask"]),
        (parity["loss"]["texts"], parity["loss"]["token_ids"], parity["loss"]["attention_mask"]),
    ]:
        got_ids, got_mask = tiny.tokenize(_flat(texts))
        assert torch.equal(got_ids, ids)
        assert torch.equal(got_mask, mask)
    ids, _ = tiny.tokenize(["person", "", " "])
    assert ids[0].tolist() == [49406, 2533, 49407]
    assert ids[1].tolist() == [49406, 49407, 49407] and ids[2].tolist() == [49406, 49407, 49407]


def test_long_text_is_cut_to_77_tokens_with_end_token(tiny):
    ids, mask = tiny.tokenize(["dog " * 100, "cat"])
    assert ids.shape == (2, 77) and ids[0, -1].item() == 49407 and mask[1].sum().item() == 3


def test_state_dict_keys_match_official(official_encoder, spec_fixtures):
    official = json.loads((spec_fixtures / "official_keys_s.json").read_text())["keys"]
    expected = {k["name"]: tuple(k["shape"]) for k in official if k["name"].startswith(PREFIX)}
    ours = {PREFIX + k: tuple(v.shape) for k, v in official_encoder.state_dict().items()}
    assert len(expected) == 197
    assert ours == expected


def test_parity_with_official_text_backbone(official_encoder, parity):
    ids, mask = official_encoder.tokenize(_flat(parity["texts"]))
    with torch.no_grad():
        embeds = official_encoder.embed_tokens(ids, mask)
    ref = parity["text_embeds_unnormalized"]
    assert (embeds - ref).abs().max() <= 1e-4 * ref.abs().max()
    feats = official_encoder(parity["texts"])
    assert feats.shape == (2, 5, 512)
    assert torch.allclose(feats, parity["text_feats"], rtol=1e-4, atol=1e-6)
    # Train-time lists are padded with '' (start + end tokens only). Each text's embedding is
    # independent of its batch (causal mask), so the tail of image 1's 80 texts is enough.
    tail = parity["loss"]["texts"][1][-6:]
    assert tail[-1] == ""
    feats = official_encoder.encode(tail)
    assert torch.allclose(feats, parity["loss"]["text_feats"][1, -6:], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("eos_token_id", [2, 49407])
def test_pooling_is_first_end_token_for_either_hf_eos_rule(tiny, eos_token_id):
    tiny.model.text_model.eos_token_id = eos_token_id
    ids, mask = tiny.tokenize(["a photo of a dog", "cat", ""])
    with torch.no_grad():
        ours = tiny.embed_tokens(ids, mask)
        hf = tiny.model(input_ids=ids, attention_mask=mask).text_embeds
    assert torch.allclose(ours, hf, atol=1e-6)
    # and not the last token: padded rows would differ if the pads were pooled
    last = tiny.model.text_projection(tiny.model.text_model(input_ids=ids).last_hidden_state[:, -1])
    assert not torch.allclose(ours[1], last[1], atol=1e-4)


def test_forward_is_normalised_and_independent_of_batching(tiny):
    feats = tiny([["cat", "dog"], ["a red car", "cat"]])
    assert feats.shape == (2, 2, 32)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2, 2), atol=1e-5)
    tiny.cache_size = 0  # no cache: run each text alone and compare
    alone = torch.cat([tiny.encode([t]) for t in ["cat", "dog", "a red car", "cat"]])
    assert torch.allclose(feats.reshape(4, -1), alone, atol=1e-5)


def test_frozen_by_default_and_train_keeps_eval(tiny):
    assert all(not p.requires_grad for p in tiny.parameters())
    tiny.train()
    assert tiny.training and not tiny.model.training
    assert not tiny([["cat"]]).requires_grad
    tiny.set_frozen(False)
    assert tiny.model.training and all(p.requires_grad for p in tiny.parameters())
    tiny([["cat", "dog"]]).sum().backward()
    assert tiny.model.text_projection.weight.grad is not None


def test_vocabulary_cache_hits_and_invalidation(tiny):
    calls = _count_tower_calls(tiny)
    vocab = ["person", "traffic light", "hot dog"]
    first = tiny.encode_vocabulary(vocab)
    again = tiny.encode_vocabulary(vocab)
    assert len(calls) == 1 and torch.equal(first, again)
    assert torch.equal(tiny([vocab, vocab[::-1]])[1], first.flip(0))
    assert len(calls) == 1  # forward reuses the cached strings
    tiny.encode_vocabulary(vocab + ["cat"])
    assert len(calls) == 2  # only the new string is encoded...
    tiny.encode_vocabulary(vocab + ["cat"])
    assert len(calls) == 2
    # ...and loading weights invalidates the cache
    state = {k: v + 0.1 * torch.randn_like(v) for k, v in tiny.state_dict().items()}
    tiny.load_state_dict(state)
    changed = tiny.encode_vocabulary(vocab)
    assert len(calls) == 3 and not torch.allclose(changed, first)
    with torch.no_grad():  # so does any in-place edit of a weight
        tiny.model.text_projection.weight.mul_(2.0)
        tiny.model.text_model.final_layer_norm.bias.add_(0.5)
    edited = tiny.encode_vocabulary(vocab)
    assert not torch.allclose(edited, changed)
    assert len(calls) == 4
    # a replaced parameter object, or a replaced tower, is seen too
    tiny.model.text_projection.weight = torch.nn.Parameter(tiny.model.text_projection.weight.detach().flip(0))
    assert not torch.allclose(tiny.encode_vocabulary(vocab), edited) and len(calls) == 5
    tiny.model = copy.deepcopy(tiny.model)
    tiny.encode_vocabulary(vocab)
    assert len(calls) == 6
    replaced = tiny.encode_vocabulary(vocab)  # cached again
    tiny.model.text_projection = torch.nn.Linear(32, 32, bias=False)  # a replaced submodule
    assert not torch.allclose(tiny.encode_vocabulary(vocab), replaced)


def test_cache_evicts_the_least_recently_used_text(tiny):
    # Room for 2: after a, b, c the oldest (a) is gone and c, the newest, is kept; b is still there.
    tiny.cache_size = 2
    calls = _count_tower_calls(tiny)
    for text in ("a", "b", "c"):
        tiny.encode([text])
    assert len(calls) == 3
    tiny.encode(["c"])
    tiny.encode(["b"])
    assert len(calls) == 3  # both hits
    tiny.encode(["a"])
    assert len(calls) == 4  # evicted, encoded again
    # a hit makes a text the most recent: b (stored before a) is used again, so d evicts a, not b
    tiny.encode(["b"])
    tiny.encode(["d"])
    assert len(calls) == 5
    tiny.encode(["b"])
    assert len(calls) == 5  # kept by its use
    tiny.encode(["a"])
    assert len(calls) == 6  # evicted


def test_unfrozen_encoder_does_not_cache(tiny):
    tiny.set_frozen(False)
    calls = _count_tower_calls(tiny)
    tiny.encode_vocabulary(["cat"])
    tiny.encode_vocabulary(["cat"])
    assert len(calls) == 2


def test_position_ids_key_is_tolerated(tiny):
    state = tiny.state_dict()
    key = "model.text_model.embeddings.position_ids"
    assert key not in state  # missing is fine: non-persistent buffer in current transformers
    state[key] = torch.arange(77)[None]  # written by transformers < 4.31
    result = tiny.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    holder = torch.nn.Module()
    holder.text_model = tiny
    nested = {"text_model." + k: v for k, v in state.items()}
    holder.load_state_dict(nested, strict=True)


def test_bad_text_lists_give_clear_errors(tiny):
    with pytest.raises(ValueError, match="same non-zero number of texts"):
        tiny([["cat", "dog"], ["car"]])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tiny.encode(["cat", 3])
    with pytest.raises(TypeError, match="list"):
        tiny("cat")


def test_deepcopy_for_ema(tiny):
    tiny.encode_vocabulary(["cat"])
    clone = copy.deepcopy(tiny)
    assert torch.allclose(clone.encode_vocabulary(["cat"]), tiny.encode_vocabulary(["cat"]))
    with torch.no_grad():  # the copy watches its own weights, not the original's
        clone.model.text_projection.weight.copy_(clone.model.text_projection.weight.flip(0))
    assert not torch.allclose(clone.encode_vocabulary(["cat"]), tiny.encode_vocabulary(["cat"]))


def test_missing_local_folder_error(tmp_path):
    missing = tmp_path / "no_such_clip"
    with pytest.raises(TextModelUnavailableError, match="no_such_clip") as info:
        CLIPTextEncoder.from_pretrained(str(missing))
    assert "local folder" in str(info.value)
    assert "hf download" not in str(info.value)  # it named the path as a hub id to download


def test_offline_hub_id_error_is_fast_and_clear(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TextModelUnavailableError) as info:
        CLIPTextEncoder.from_pretrained("worldtune-test/no-such-clip")
    message = str(info.value)
    assert "worldtune-test/no-such-clip" in message and "HF_HUB_OFFLINE" in message and "local folder" in message


def test_unreachable_hub_error(monkeypatch):
    import huggingface_hub

    def no_network(self, *args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_network)
    with pytest.raises(TextModelUnavailableError, match="cannot provide it.*ConnectionError"):
        CLIPTextEncoder.from_pretrained("worldtune-test/no-such-clip")


def test_from_pretrained_full_clip_checkpoint(tmp_path):
    """Hub ids such as openai/clip-vit-base-patch32 hold a whole CLIPModel; we take its text half."""
    from transformers import CLIPConfig, CLIPModel

    from tests.helpers.clip_factory import write_clip_tokenizer

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, projection_dim=16)
    config = CLIPConfig(
        text_config=dict(small, hidden_act="quick_gelu", eos_token_id=2),
        vision_config=dict(small, image_size=32, patch_size=16),
        projection_dim=16,
    )
    clip = CLIPModel(config)
    clip.save_pretrained(str(tmp_path))
    write_clip_tokenizer(tmp_path)
    encoder = CLIPTextEncoder.from_pretrained(str(tmp_path))
    ids, mask = encoder.tokenize(["cat", "a dog on a sofa"])
    with torch.no_grad():
        ref = clip.get_text_features(input_ids=ids, attention_mask=mask)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output  # transformers 4.x vs 5.x
    assert torch.allclose(encoder.embed_tokens(ids, mask), ref, atol=1e-6)


def test_folder_with_missing_text_weights_is_an_error(tmp_path, tiny_folder):
    """A text weight left at random init must not pass silently."""
    import shutil

    from safetensors.torch import load_file, save_file

    for name in ("config.json", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_folder / name, tmp_path / name)
    weights = load_file(str(tiny_folder / "model.safetensors"))
    del weights["text_projection.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(TextModelUnavailableError, match="text_projection.weight") as info:
        CLIPTextEncoder.from_pretrained(str(tmp_path))
    assert str(tmp_path) in str(info.value) and "hf download" not in str(info.value)


def test_openai_tokenizer_works_offline_from_the_bundled_copy(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from worldtune.model.text_encoder import load_clip_tokenizer

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing to find there
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tokenizer = load_clip_tokenizer("openai/clip-vit-base-patch32")
    assert tokenizer(["person", ""])["input_ids"] == [[49406, 2533, 49407], [49406, 49407]]
    with pytest.raises(TextModelUnavailableError):  # other ids still need their own files
        load_clip_tokenizer("worldtune-test/no-such-clip")


def test_folder_without_vocabulary_is_refused_not_silently_empty(tmp_path):
    from worldtune.model.text_encoder import load_clip_tokenizer

    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "CLIPTokenizer"}')
    with pytest.raises(TextModelUnavailableError, match="vocabulary"):
        load_clip_tokenizer(str(tmp_path))


def test_per_string_encoding_is_independent_of_batch_mates(tiny):
    calls = _count_tower_calls(tiny)
    vocab = ["a", "traffic light on a long street corner", "hot dog"]
    together = tiny.encode(vocab, per_string=True)
    assert len(calls) == 3  # one tower call per uncached string
    tiny.clear_cache()
    alone = torch.cat([tiny.encode([t]) for t in vocab])
    assert torch.equal(together, alone)  # bit for bit, whatever the padding of a batched call
    tiny.encode(vocab + ["cat"], per_string=True)
    assert len(calls) == 7  # only "cat" was new


def test_tiny_tower_folders_build_without_open_clip(tmp_path, monkeypatch):
    """The test towers (CUDA tests included) must build on the lent GPU machine, which has no
    open_clip: the helper then takes worldtune's bundled vocabulary, the same as open_clip's."""
    import importlib.util

    from transformers import CLIPTokenizer

    from tests.helpers import clip_factory

    if importlib.util.find_spec("open_clip") is not None:
        assert clip_factory.bundled_vocab_and_merges() == clip_factory.clip_vocab_and_merges()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "open_clip" else real_find_spec(name, *a))
    folder = clip_factory.write_clip_tokenizer(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    assert tokenizer(["person", "a dog"])["input_ids"] == [[49406, 2533, 49407], [49406, 320, 1929, 49407]]


def test_loading_local_weights_shows_no_progress_bar(tiny_folder, capsys):
    """transformers 5 draws a weight-loading bar: noise for a local tower, once per process under torchrun."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    CLIPTextEncoder.from_pretrained(str(tiny_folder))
    assert "Loading weights" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled() == enabled  # left as it was


def test_pretrained_weights_embed_bit_for_bit_as_when_loaded_into_a_built_tower(tiny_folder):
    """A run's tower comes from `from_pretrained`; its resume (and eval, predict) builds the tower
    and loads the same weights from the checkpoint: the embeddings must agree to the last bit, or a
    resumed run drifts from the run it continues. transformers 5 leaves the weights mapped from
    the file at unaligned addresses, where the CPU kernels round otherwise."""
    from worldtune.model.loading import build_text_model

    pretrained = CLIPTextEncoder.from_pretrained(str(tiny_folder))
    rebuilt = build_text_model("openai/clip-vit-base-patch32",
                               weights={PREFIX + k: v for k, v in pretrained.state_dict().items()}, num_heads=2)
    rebuilt.load_state_dict(pretrained.state_dict())
    texts = ["person", "a red square", "traffic light on a long street corner", "hot dog", ""]
    assert torch.equal(pretrained.encode(texts, per_string=True), rebuilt.encode(texts, per_string=True))
