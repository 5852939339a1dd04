"""Fixtures shared by every test folder: a tiny random causal LM built on the spot (tests/model, tests/contract)."""
from __future__ import annotations

import os
import signal

import pytest

# A suite started in the background by a script (`pytest &`) inherits SIGINT ignored, and so would
# every child the Ctrl-C tests start and signal. A handler here makes exec'd children start with
# the default disposition again, as under a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download

SENTENCES = [
    "The capital of France is Paris.",
    "Q: What is the capital of Germany?\nA: Berlin",
    "Is it on the coast? yes no maybe",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 1999 2024-01-31",
    "Café, naïve, Grüße, 日本語, emoji 🙂 and tabs\tand newlines\n",
    "{\"name\": \"Ada\", \"age\": 36}",
] * 5


def make_tiny_model(folder, *, chat_template: str | None = None, padded_width: int = 64):
    """Save a random 2-layer Llama and a byte-level BPE tokenizer trained on SENTENCES into `folder`.

    The embedding matrix is padded to a multiple of `padded_width`, wider than the tokenizer.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|user|>", "<|end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(SENTENCES, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                        additional_special_tokens=["<|user|>", "<|end|>"])
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(folder))
    width = -(-len(tokenizer) // padded_width) * padded_width
    config = LlamaConfig(vocab_size=width, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(name="make_tiny_model", scope="session")
def make_tiny_model_fixture():
    """`make_tiny_model(folder, chat_template=None)`, for tests that need a variant."""
    return make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A folder holding a tiny random Llama and its tokenizer (with a chat template)."""
    template = ("{% for m in messages %}<|user|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|user|>assistant\n{% endif %}")
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), chat_template=template)


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium driven by Playwright (never `playwright install`); skips when either is missing.

    Per module: Playwright's sync API keeps an event loop running in the main thread while it is
    open, so tests of other modules that call asyncio.run must not run inside it.
    """
    import shutil
    sync_api = pytest.importorskip("playwright.sync_api")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no system chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        browser.close()
