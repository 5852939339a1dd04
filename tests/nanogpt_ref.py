"""nanoGPT's GPT written again for the tests (the architecture of Karpathy's model.py), and checkpoints in its train.py's format.

The reference the nanoGPT loader is checked against: plain torch, nn.Linear layers, exact GELU,
LayerNorm with an optional bias, lm_head tied to the token embedding, and the causal-mask buffer
`attn.bias` that nanoGPT registers when it has no flash attention.
"""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

CHARS = list("\n !,.:?0123456789abcdefghijklmnopqrstuvwxyzABCQSTXY")


class LayerNorm(nn.Module):
    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, bias: bool):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.n_head, self.n_embd = n_head, n_embd
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, n_embd: int, bias: bool):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, bias: bool):
        super().__init__()
        self.ln_1 = LayerNorm(n_embd, bias)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, bias)
        self.ln_2 = LayerNorm(n_embd, bias)
        self.mlp = MLP(n_embd, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, n_layer: int, n_head: int, n_embd: int, block_size: int, bias: bool, vocab_size: int,
                 dropout: float = 0.0):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd), drop=nn.Dropout(dropout),
            h=nn.ModuleList([Block(n_embd, n_head, block_size, bias) for _ in range(n_layer)]),
            ln_f=LayerNorm(n_embd, bias)))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, as nanoGPT does

    def forward(self, idx):
        pos = torch.arange(idx.size(1))
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab): every position


def make_checkpoint(folder: Path, *, bias: bool = True, compiled: bool = False, meta: str | None = "data",
                    vocab_size: int | None = None, block_size: int = 128, seed: int = 0,
                    chars: list[str] = CHARS) -> tuple[Path, GPT]:
    """Write `folder/out/ckpt.pt` as nanoGPT's train.py writes it (model, optimizer after one step,
    model_args, iter_num, best_val_loss, config) and the char vocabulary's meta.pkl: in
    `folder/data/tiny_char/` (meta="data", where sample.py looks), next to the checkpoint
    (meta="next"), or nowhere (None). → (the checkpoint's path, the reference GPT)."""
    torch.manual_seed(seed)
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=block_size, bias=bias,
                vocab_size=vocab_size or len(chars), dropout=0.0)
    gpt = GPT(**args)
    with torch.no_grad():  # weights large enough that every part of the network shows in the logits
        for p in gpt.parameters():
            p.normal_(0.0, 0.3 if p.dim() == 1 else 0.15)
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=1e-9)
    gpt(torch.tensor([[1, 2, 3]])).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state = gpt.state_dict()
    if compiled:  # torch.compile(model).state_dict() spells every key so
        state = {"_orig_mod." + k: v for k, v in state.items()}
    out = folder / "out"
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = {"model": state, "optimizer": optimizer.state_dict(), "model_args": args, "iter_num": 1,
                  "best_val_loss": torch.tensor(4.2),
                  "config": {"out_dir": "out", "dataset": "tiny_char", "batch_size": 12, "learning_rate": 1e-3,
                             "compile": compiled, "dtype": "float32", "device": "cpu", "bias": bias}}
    torch.save(checkpoint, out / "ckpt.pt")
    if meta is not None:
        where = folder / "data" / "tiny_char" if meta == "data" else out
        where.mkdir(parents=True, exist_ok=True)
        with open(where / "meta.pkl", "wb") as f:
            pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                         "stoi": {c: i for i, c in enumerate(chars)}}, f)
    return out / "ckpt.pt", gpt.eval()
