"""nanoGPT checkpoints (the `ckpt.pt` that nanoGPT's train.py writes) as transformers GPT-2 models.

An engine module (it imports torch), reached through `models.transformers.load_model` for a
`.pt` file or a folder holding `ckpt.pt`. nanoGPT's GPT is GPT-2's architecture with
`nn.Linear` where GPT-2 has `Conv1D` (the same weights, transposed), exact GELU, and optional
biases; the conversion is exact (a missing bias is a zero bias). The tokenizer is nanoGPT's
character vocabulary (`meta.pkl`, from its `prepare.py`) when one is found, else GPT-2's BPE
from the local Hugging Face cache.
"""
from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from ..errors import ModelError
from ..index import Vocabulary
from . import NANOGPT_CHECKPOINT
from .hf_tokenizer import PLAIN_ROLE_MARKERS
from .transformers import Placement, TransformersModel, _model_errors, _quiet

GPT2_TOKENIZER = "gpt2"  # the hub id of GPT-2's BPE, which nanoGPT's GPT-2 datasets are encoded with
COMPILED_PREFIX = "_orig_mod."  # what torch.compile puts before every key of the model it wraps
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
# nanoGPT's nn.Linear weights that GPT-2's Conv1D stores transposed (in_features, out_features).
TRANSPOSED = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def load_checkpoint(path: Path, name: str, place: Placement) -> TransformersModel:
    """The nanoGPT model in `path` (a checkpoint file, or a folder holding `ckpt.pt`) on `place`."""
    file = path / NANOGPT_CHECKPOINT if path.is_dir() else path
    checkpoint = read_checkpoint(file, name)
    with _quiet(), _model_errors(name):
        module = to_gpt2(checkpoint, name).to(device=place.device, dtype=place.dtype).eval()
    meta = find_meta(file, checkpoint)
    if meta is not None:
        return CharModel(name, module, read_meta(meta, name))
    return TransformersModel(name, module, _gpt2_tokenizer(name, file))


def read_checkpoint(file: Path, name: str) -> dict:
    """The checkpoint's contents, read with `torch.load(weights_only=True)`: tensors and plain values only, no code run."""
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"model {name!r}: {file} holds objects other than tensors and plain values ({first}); "
                         "lmql_lite reads checkpoints with torch.load(weights_only=True), which runs no code "
                         "from the file. Save a checkpoint that holds only {'model': state_dict, "
                         "'model_args': {...}} (as nanoGPT's train.py does)") from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise ModelError(f"model {name!r}: {file} cannot be read as a torch checkpoint: {e}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict) \
            or not isinstance(checkpoint.get("model_args"), dict):
        raise ModelError(f"model {name!r}: {file} is not a nanoGPT checkpoint (a dict with 'model', the "
                         "state dict, and 'model_args', as nanoGPT's train.py writes)")
    return checkpoint


def to_gpt2(checkpoint: dict, name: str) -> GPT2LMHeadModel:
    """The checkpoint's GPT as a transformers GPT2LMHeadModel with the same outputs (float32, on the CPU)."""
    args = checkpoint["model_args"]
    missing = [k for k in MODEL_ARGS if not isinstance(args.get(k), int)]
    if missing:
        raise ModelError(f"model {name!r}: the checkpoint's model_args lack {', '.join(missing)}")
    if args["n_embd"] % args["n_head"]:
        raise ModelError(f"model {name!r}: n_embd {args['n_embd']} is not a multiple of n_head {args['n_head']}")
    state = {k.removeprefix(COMPILED_PREFIX): v for k, v in checkpoint["model"].items()}
    # The causal-mask buffers nanoGPT keeps when it has no flash attention are not weights.
    state = {k: v for k, v in state.items() if not k.endswith(".attn.bias")}
    for key in [k for k in state if k.endswith(TRANSPOSED)]:
        state[key] = state[key].t()
    head, embedding = state.pop("lm_head.weight", None), state.get("transformer.wte.weight")
    tied = head is None or (embedding is not None and head.shape == embedding.shape and torch.equal(head, embedding))
    config = GPT2Config(vocab_size=args["vocab_size"], n_positions=args["block_size"], n_embd=args["n_embd"],
                        n_layer=args["n_layer"], n_head=args["n_head"], activation_function="gelu",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
                        tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None)
    module = GPT2LMHeadModel(config)
    if not tied:
        state["lm_head.weight"] = head
    expected = module.state_dict()
    for key, value in expected.items():  # bias=False: nanoGPT has no bias where GPT-2 adds a zero one
        if key not in state and key.endswith(".bias"):
            state[key] = torch.zeros_like(value)
    absent = [k for k in expected if k not in state and not (tied and k == "lm_head.weight")]
    extra = [k for k in state if k not in expected]
    if absent or extra:
        raise ModelError(f"model {name!r}: the checkpoint is not a nanoGPT GPT of its model_args"
                         + (f"; missing {', '.join(absent[:3])}" if absent else "")
                         + (f"; unexpected {', '.join(extra[:3])}" if extra else ""))
    try:
        module.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    except RuntimeError as e:  # a shape that does not match model_args
        raise ModelError(f"model {name!r}: the checkpoint's weights do not fit its model_args: {e}") from None
    if tied:
        module.tie_weights()
    return module


def find_meta(file: Path, checkpoint: dict) -> Path | None:
    """nanoGPT's `meta.pkl` for the checkpoint in `file`: next to it, else `data/<dataset>/meta.pkl` in
    its folder or the folder above (where nanoGPT's sample.py finds it, run from nanoGPT's root)."""
    candidates = [file.parent / "meta.pkl"]
    dataset = (checkpoint.get("config") or {}).get("dataset") if isinstance(checkpoint.get("config"), dict) else None
    if isinstance(dataset, str) and dataset and Path(dataset).name == dataset:
        candidates += [root / "data" / dataset / "meta.pkl" for root in (file.parent, file.parent.parent)]
    return next((c for c in candidates if c.is_file()), None)


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings and numbers only: a class or function named in the file is refused, so nothing in it runs."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it names {module}.{name}, and only plain values are read")


def read_meta(path: Path, name: str) -> list[str]:
    """`itos` of nanoGPT's `meta.pkl` as a list: id → the text of the token (one character each)."""
    try:
        with open(path, "rb") as f:
            meta = _PlainUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ModelError(f"model {name!r}: {path} is not a nanoGPT meta.pkl ({e})") from None
    itos = meta.get("itos") if isinstance(meta, dict) else None
    if not isinstance(itos, dict) or sorted(itos) != list(range(len(itos))) \
            or not all(isinstance(t, str) and t for t in itos.values()):
        raise ModelError(f"model {name!r}: {path} is not a nanoGPT meta.pkl (no 'itos' mapping 0..n-1 to text)")
    return [itos[i] for i in range(len(itos))]


def _gpt2_tokenizer(name: str, file: Path):
    try:
        with _quiet():
            return AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        raise ModelError(
            f"model {name!r}: no nanoGPT meta.pkl was found (next to {file.name}, or in data/<dataset>/), so its "
            f"tokenizer would be GPT-2's BPE ({GPT2_TOKENIZER!r}), which is not in the local Hugging Face cache"
            + (" (HF_HUB_OFFLINE is set)" if offline else "")
            + ". For a character-level model, put the meta.pkl that nanoGPT's prepare.py wrote next to the "
            "checkpoint; for a GPT-2 BPE model, fetch the tokenizer once while online: python -c \"from "
            "transformers import AutoTokenizer; AutoTokenizer.from_pretrained('gpt2')\"") from e


class CharModel(TransformersModel):
    """A model over nanoGPT's character vocabulary: token i is the text `itos[i]`.

    No BOS and no end-of-sequence token (nanoGPT has neither): a hole ends by its constraints
    (a stop phrase, a length, a choice) or the decoder's `max_len`. Prompt text can hold only the
    vocabulary's characters.
    """

    def __init__(self, name: str, module, itos: Sequence[str]):
        self.name, self.module, self.tokenizer, self.bos_ids = name, module, None, []
        self._itos = list(itos)
        self._stoi: dict[str, int] = {}
        for i, text in enumerate(self._itos):
            self._stoi.setdefault(text, i)

    @functools.cached_property
    def vocabulary(self) -> Vocabulary:
        width = self.module.get_output_embeddings().weight.shape[0]
        tokens = tuple(t.encode("utf-8") for t in self._itos[:width]) + (b"",) * max(0, width - len(self._itos))
        return Vocabulary(tokens, frozenset(), frozenset(range(len(self._itos), width)))

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        """One id per character; a character the vocabulary lacks is a ModelError."""
        try:
            return [self._stoi[c] for c in text]
        except KeyError as e:
            known = "".join(sorted(c for c in self._stoi if len(c) == 1))
            raise ModelError(f"model {self.name!r} has a character vocabulary without {e.args[0]!r} (in "
                             f"{text[:40]!r}); it knows only {known!r}") from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self._itos[i] for i in ids if 0 <= i < len(self._itos))

    @functools.cached_property
    def _chat_markers(self) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
        return dict(PLAIN_ROLE_MARKERS), {}
