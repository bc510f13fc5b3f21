"""Model and training configurations, with derived fields, validation and named presets.

    from flopscale.engine import ModelConfig
    cfg = ModelConfig(n_layer=2, d_model=64, n_heads=4, n_ctx=32, n_vocab=256)  # d_attn, d_ff derived
    cfg = ModelConfig.from_preset("gpt2-small")
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Optional


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line meant for the user."""


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _check_types(obj) -> None:
    """Reject a value of the wrong type with one clear line (bools are not numbers here)."""
    for f in dataclasses.fields(obj):
        v, t = getattr(obj, f.name), str(f.type)
        if t.startswith("Optional["):
            if v is None:
                continue
            t = t[len("Optional["):-1]
        want = _TYPES[t]
        if not isinstance(v, want) or (isinstance(v, bool) and t != "bool"):
            raise ConfigError(f"{f.name} must be of type {t}, got {v!r}")


class _DictConfig:
    """to_dict / from_dict for the config dataclasses; unknown fields are rejected."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
        return cls(**d)


@dataclass
class ModelConfig(_DictConfig):
    """Shape of a GPT-2-style decoder (Kaplan et al. notation)."""

    n_layer: int = 2          # Transformer blocks
    d_model: int = 64         # residual stream width
    n_heads: int = 4          # attention heads; d_attn / n_heads is the head dim
    d_attn: Optional[int] = None  # attention width; defaults to d_model (the paper's choice)
    d_ff: Optional[int] = None    # feedforward width; defaults to 4 * d_model
    n_ctx: int = 1024         # context length (maximum T)
    n_vocab: int = 50257      # vocabulary size (GPT-2's BPE)

    def __post_init__(self):
        if self.d_attn is None:
            self.d_attn = self.d_model
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        _check_types(self)
        for name in ("n_layer", "d_model", "n_heads", "d_attn", "d_ff", "n_ctx", "n_vocab"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.d_attn % self.n_heads:
            which = "d_model" if self.d_attn == self.d_model else "d_attn"
            raise ConfigError(f"{which} ({self.d_attn}) must be divisible by n_heads ({self.n_heads})")

    @property
    def d_head(self) -> int:
        return self.d_attn // self.n_heads

    @property
    def N(self) -> int:
        """Non-embedding parameters, the paper's N = 2 d_model n_layer (2 d_attn + d_ff)."""
        from .flops import non_embedding_params

        return non_embedding_params(self)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ModelConfig":
        if name not in MODEL_PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(MODEL_PRESETS)}")
        return cls.from_dict({**MODEL_PRESETS[name], **overrides})


# Named shapes.  The gpt2-* rows are GPT-2's (n_ctx 1024, n_vocab 50257); gpt2-xl is the
# paper's 1.5B shape.  The small rows keep the paper's aspect ratio d_model / n_layer near
# 32-64 and head dim 16-64, and are what the CPU presets of sweeps are built from.
MODEL_PRESETS = {
    "nano": dict(n_layer=2, d_model=64, n_heads=4, n_ctx=128),
    "micro": dict(n_layer=3, d_model=96, n_heads=6, n_ctx=128),
    "mini": dict(n_layer=4, d_model=128, n_heads=8, n_ctx=128),
    "gpt2-small": dict(n_layer=12, d_model=768, n_heads=12),
    "gpt2-medium": dict(n_layer=24, d_model=1024, n_heads=16),
    "gpt2-large": dict(n_layer=36, d_model=1280, n_heads=20),
    "gpt2-xl": dict(n_layer=48, d_model=1600, n_heads=25),
}


@dataclass
class TrainConfig(_DictConfig):
    """One training run: data, schedule, optimizer, backend, logging."""

    data: str = "stdlib"          # "stdlib" (the embedded default corpus) or a path
    tokenizer: str = "bpe-4096"   # "bpe-V": byte-level BPE of V tokens trained on the corpus; or a tokenizer.json path
    max_tokens: Optional[int] = None  # cap on the training set size D, in tokens
    batch_size: int = 8           # sequences per optimizer step (global)
    grad_accum: int = 1           # micro-batches per step; batch_size must divide evenly
    steps: int = 200              # optimizer steps
    lr: float = 3e-3              # peak learning rate
    min_lr_frac: float = 0.1      # cosine decays to lr * min_lr_frac
    warmup: int = 20              # linear warmup steps
    weight_decay: float = 0.1     # decoupled, on matmul weights and embeddings only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0        # global-norm clip; 0 disables
    eval_every: int = 50          # steps between validation evals (and checkpoints)
    eval_batches: int = 4         # validation batches per eval
    log_every: int = 1            # steps between metrics.jsonl rows
    seed: int = 1337
    backend: str = "torch"
    device: str = "cpu"
    dtype: str = "float32"        # float32 | bfloat16 (autocast) | float16 (autocast)
    noise_scale: bool = False     # estimate the gradient noise scale (needs grad_accum >= 2)

    def __post_init__(self):
        _check_types(self)
        for name in ("batch_size", "grad_accum", "steps", "eval_every", "eval_batches", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.warmup < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("warmup, weight_decay and grad_clip must be non-negative")
        if not 0 <= self.min_lr_frac <= 1:
            raise ConfigError(f"min_lr_frac must lie in [0, 1], got {self.min_lr_frac}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be positive, got {self.max_tokens}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        from flopscale.kernels import BACKENDS

        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.tokenizer.startswith("bpe-"):
            v = self.tokenizer[4:]
            if not v.isdigit() or not 257 <= int(v) <= 65535:
                raise ConfigError(f"tokenizer {self.tokenizer!r}: want bpe-V with 257 <= V <= 65535 (byte alphabet, uint16 ids)")
