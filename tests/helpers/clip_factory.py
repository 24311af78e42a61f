"""Offline builder of a Hugging Face CLIP text tower folder (random weights + real CLIP tokenizer).

The OpenAI CLIP BPE vocabulary ships inside ``open_clip_torch`` as ``bpe_simple_vocab_16e6.txt.gz``.
We turn it into the Hugging Face ``vocab.json`` / ``merges.txt`` pair so that tests can build a real
``CLIPTokenizer`` without network access (where open_clip is missing, as on the lent GPU machine,
worldtune's bundled copy of the same two files is used). The token ids are those of OpenAI CLIP: 49406 is
``<|startoftext|>``, 49407 is ``<|endoftext|>`` (also the pad token), vocabulary size 49408.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import torch

# OpenAI CLIP keeps the first 49152 - 256 - 2 merges of its BPE file (the first line is a header).
_NUM_MERGES = 49152 - 256 - 2
_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def _bpe_vocab_file() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip_torch is not installed; it ships the CLIP BPE file (pip install open_clip_torch)")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise RuntimeError(f"CLIP BPE vocabulary not found at {path}")
    return path


def byte_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: every byte maps to one printable unicode character.

    Printable Latin-1 bytes map to themselves; the remaining 68 bytes (control characters, space, ...)
    are shifted to code points 256, 257, ... so that no BPE symbol is whitespace or a control char.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    byte_values = list(printable)
    code_points = list(printable)
    shift = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            code_points.append(256 + shift)
            shift += 1
    return {b: chr(c) for b, c in zip(byte_values, code_points)}


def bundled_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The vocabulary and merges of worldtune's own tokenizer copy (`BUNDLED_TOKENIZER_DIR`)."""
    from worldtune.model.text_encoder import BUNDLED_TOKENIZER_DIR

    vocab = json.loads((BUNDLED_TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    lines = (BUNDLED_TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").split("\n")
    return vocab, [line for line in lines[1:] if line]  # the first line is the "#version" header


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Return the OpenAI CLIP vocabulary (token -> id, 49408 entries) and its BPE merges ("a b" strings).

    Built from open_clip's BPE file when it is installed (a source independent of worldtune's copy);
    without it (the lent GPU machine has no open_clip) from worldtune's bundled copy, the same files.
    """
    if importlib.util.find_spec("open_clip") is None:
        return bundled_vocab_and_merges()
    lines = gzip.open(_bpe_vocab_file(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : _NUM_MERGES + 1]
    alphabet = list(byte_to_unicode().values())
    tokens = alphabet + [a + "</w>" for a in alphabet]
    tokens += ["".join(m.split(" ")) for m in merges]
    tokens += list(_SPECIAL_TOKENS)
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_clip_tokenizer(path: str | Path) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer config files of CLIP to ``path``."""
    from transformers import CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=77)
    tokenizer.save_pretrained(str(path))
    return path


def make_clip_text_folder(
    path: str | Path,
    hidden: int = 512,
    layers: int = 12,
    heads: int = 8,
    intermediate: int | None = None,
    projection: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised ``CLIPTextModelWithProjection`` plus the CLIP tokenizer to ``path``.

    The defaults give the ViT-B/32 text tower shape (hidden 512, 12 layers, 8 heads, MLP 2048,
    projection 512); pass e.g. ``hidden=32, layers=1, heads=2`` for a tiny, fast tower. Vocabulary
    (49408) and positions (77) are always full size so that real CLIP token ids fit.
    Uses the legacy ``eos_token_id=2`` of the hub config (pooled token at ``argmax(input_ids)``).
    """
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    path = write_clip_tokenizer(path)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=intermediate if intermediate is not None else 4 * hidden,
        projection_dim=projection if projection is not None else hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        dropout=0.0,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config)
    model.save_pretrained(str(path))
    return path
