"""Token id → bytes, for byte-level BPE and SentencePiece-style (▁, <0xNN>) tokenizers: the bytes of a token sequence are its text."""
from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("transformers")

from lmql_lite.models.transformers import default_tokenizer, vocabulary_from_tokenizer  # noqa: E402

TEXTS = [
    "The capital of France is Paris.",
    "  two spaces, a\ttab and a newline\n",
    "Café, naïve, Grüße, señor",
    "日本語のテキスト and 中文",
    "emoji 🙂🚀 and symbols ∀x ∈ ℝ",
    '{"name": "Ada", "age": 36}',
    "2024-01-31T12:00:00Z",
]


def byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=350, special_tokens=["<|endoftext|>", "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(TEXTS * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])


def sentencepiece_tokenizer():
    """A Llama-style tokenizer: ▁ for spaces, <0xNN> byte fallback, a few merges."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["▁", "t", "h", "e", "a", "c", "f", "n", "d", "▁t", "he", "▁the"]:
        vocab[piece] = len(vocab)
    spec = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for c, i in list(vocab.items())[:3]],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                          {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": [["▁", "t"], ["h", "e"], ["▁t", "he"]]},
    }
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def joined(vocabulary, ids) -> bytes:
    return b"".join(vocabulary.tokens[i] for i in ids)


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_tokens_join_to_the_text(text):
    tokenizer = byte_level_tokenizer()
    vocabulary = vocabulary_from_tokenizer(tokenizer)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert joined(vocabulary, ids).decode("utf-8") == text == tokenizer.decode(ids)


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_tokens_join_to_the_text_after_the_prepended_space(text):
    tokenizer = sentencepiece_tokenizer()
    vocabulary = vocabulary_from_tokenizer(tokenizer)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert joined(vocabulary, ids).decode("utf-8") == " " + text
    assert vocabulary.tokens[3 + 0xC3] == b"\xc3" and vocabulary.tokens[tokenizer.convert_tokens_to_ids("▁the")] == b" the"


def test_special_tokens_are_empty_and_eos_is_listed():
    tokenizer = byte_level_tokenizer()
    vocabulary = vocabulary_from_tokenizer(tokenizer)
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert vocabulary.tokens[start] == b"" and start in vocabulary.special_ids
    assert vocabulary.eos_ids == {tokenizer.eos_token_id} and tokenizer.eos_token_id in vocabulary.special_ids
    assert all(token for i, token in enumerate(vocabulary.tokens) if i not in vocabulary.special_ids)


def test_logits_wider_than_the_tokenizer_pad_the_vocabulary_with_special_entries():
    tokenizer = byte_level_tokenizer()
    vocabulary = vocabulary_from_tokenizer(tokenizer, len(tokenizer) + 10, eos_ids=[0])
    assert len(vocabulary) == len(tokenizer) + 10
    assert vocabulary.tokens[-10:] == (b"",) * 10 and set(range(len(tokenizer), len(vocabulary))) <= vocabulary.special_ids


@pytest.mark.model
@pytest.mark.parametrize("text", TEXTS)
def test_default_tokenizer_tokens_join_to_the_text(text):
    tokenizer = default_tokenizer()
    vocabulary = vocabulary_from_tokenizer(tokenizer)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert joined(vocabulary, ids).decode("utf-8") == text == tokenizer.decode(ids)


@pytest.mark.model
def test_default_tokenizer_single_tokens_decode_to_their_bytes():
    tokenizer = default_tokenizer()
    vocabulary = vocabulary_from_tokenizer(tokenizer)
    assert len(vocabulary) == 49152 and vocabulary.eos_ids >= {tokenizer.eos_token_id}
    for i in random.Random(0).sample(range(len(vocabulary)), 3000):
        if i in vocabulary.special_ids:
            assert vocabulary.tokens[i] == b""
            continue
        try:
            text = vocabulary.tokens[i].decode("utf-8")
        except UnicodeDecodeError:  # part of a multi-byte character
            continue
        assert tokenizer.decode([i]) == text


def test_decode_writes_special_tokens_out_and_ids_past_the_tokenizer_as_nothing():
    from lmql_lite.models.hf_tokenizer import TokenizerSide

    tokenizer = byte_level_tokenizer()

    class Side(TokenizerSide):  # a model whose logits are wider than its tokenizer
        vocabulary = vocabulary_from_tokenizer(tokenizer, len(tokenizer) + 10)

    side = Side(tokenizer)
    start = side.tokenizer.convert_tokens_to_ids("<|im_start|>")
    ids = side.encode("<|im_start|>Café", special=True)
    assert ids[0] == start and side.decode(ids) == "<|im_start|>Café"
    assert side.decode([len(side.tokenizer), len(side.vocabulary) - 1]) == ""
