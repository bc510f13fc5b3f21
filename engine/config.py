"""Model and training configurations, with derived fields, validation and named presets.

    from flopscale.engine import ModelConfig
    cfg = ModelConfig(n_layer=2, d_model=64, n_heads=4, n_ctx=32, n_vocab=256)  # d_attn, d_ff derived
    cfg = ModelConfig.from_preset("gpt2-small")

Every field is declared once, here, with its default and help text (``_f``); the ``flopscale
train`` and ``flopscale flops`` flags are generated from these dataclasses by
:func:`add_config_arguments` and read back by :func:`config_values`, so a new field is one
line in its dataclass (tests/test_errors.py checks that flags and fields stay one to one).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import asdict, dataclass
from typing import Optional

from .formats import FORMATS, SAMPLING


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line meant for the user."""


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
_PARSE = {"int": int, "float": float, "str": str}


def _f(default, help: str, group: str = "run", choices=None, flag: Optional[str] = None, repeat: bool = False):
    """A config field with its CLI help and group; ``choices`` are checked in __post_init__.
    ``repeat``: a str field whose flag may be given several times, the values joined by commas."""
    return dataclasses.field(default=default, metadata={"help": help, "group": group, "choices": choices,
                                                        "flag": flag, "repeat": repeat})


def _base_type(f: dataclasses.Field) -> tuple:
    """("int" | "float" | "str" | "bool", optional?) from the annotation (a string under
    ``from __future__ import annotations``)."""
    t = str(f.type)
    if t.startswith("Optional["):
        return t[len("Optional["):-1], True
    return t, False


def _check_types(obj) -> None:
    """Reject a value of the wrong type, or outside a field's choices, with one clear line
    (bools are not numbers here)."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        t, optional = _base_type(f)
        if v is None and optional:
            continue
        want = _TYPES[t]
        if not isinstance(v, want) or (isinstance(v, bool) and t != "bool"):
            raise ConfigError(f"{f.name} must be of type {t}, got {v!r}")
        choices = f.metadata.get("choices")
        if choices and v not in choices:
            raise ConfigError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {v!r}")


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


# Model families (Kaplan et al. 2020, Figures 7 and 17); the architecture is part of the model's
# shape (N, Table 1 and the ledger's rows are functions of ModelConfig alone), so it lives here.
ARCHS = ("gpt", "lstm", "universal")

# Trackers that mirror a run's metrics rows (engine/trackers.py); "none" alone turns them off.
TRACKERS = ("tensorboard", "wandb", "none")
# TrainConfig fields that choose who watches a run, not what it computes: a resumed run or a
# cooldown branch may change them (engine/train.py leaves them out of its config comparison).
WATCH_FIELDS = ("tracker",)


@dataclass
class ModelConfig(_DictConfig):
    """Shape of a GPT-2-style decoder (Kaplan et al. notation)."""

    n_layer: int = _f(2, "Transformer blocks", "model")
    d_model: int = _f(64, "residual stream width", "model")
    n_heads: int = _f(4, "attention heads; d_attn / n_heads is the head dim (CLI default: head dim 64)", "model")
    d_attn: Optional[int] = _f(None, "attention width (default: d_model, the paper's choice)", "model")
    d_ff: Optional[int] = _f(None, "feedforward width (default: 4 * d_model)", "model")
    n_ctx: int = _f(1024, "context length (maximum T)", "model")
    n_vocab: int = _f(50257, "vocabulary size (GPT-2's BPE)", "model")
    arch: str = _f("gpt", "gpt (n_layer blocks) | lstm (n_layer LSTM layers of width d_model; attention and "
                   "feedforward fields unused) | universal (one block applied n_layer times, weights shared)",
                   "model", choices=ARCHS)

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
        """Non-embedding parameters, the paper's N (Table 1): the one formula lives in
        ``flops.non_embedding_params``; config.json records it and fitting reads it from there."""
        from .flops import non_embedding_params

        return non_embedding_params(self)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ModelConfig":
        if name not in MODEL_PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(MODEL_PRESETS)}")
        return cls.from_dict({**MODEL_PRESETS[name], **overrides})


def default_heads(width: int) -> int:
    """The CLI's head count when --n-heads is not given: head dim 64, at least one head."""
    return max(1, width // 64)


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
    """One training run: data, schedule, optimizer, backend and kernel choices, logging."""

    data: str = _f("stdlib", "'stdlib' (the embedded default corpus), a text file, a .bin shard or a folder", "data")
    tokenizer: str = _f("bpe-4096", "bpe-V (byte-level BPE of V tokens, trained on the corpus and cached) "
                        "or a tokenizer.json", "data")
    max_tokens: Optional[int] = _f(None, "cap the training set at this many tokens (dataset size D)", "data")
    # Data formats and data-constrained runs (engine/formats.py, engine/data.py).
    data_format: str = _f("auto", "auto (llm.c and FLOPSTOK shards by header, HF datasets and text by extension) | llmc | "
                          "flopstok | nanogpt (headerless uint16 train.bin/val.bin) | olmo (headerless uint16/uint32 "
                          "arrays) | hf (save_to_disk folder, parquet, jsonl) | text", "data",
                          choices=FORMATS)
    data_vocab: Optional[int] = _f(None, "vocabulary size of the data (default: its tokenizer's or header's, else the "
                                   "largest token id + 1); every id is checked below it", "data", flag="--n-vocab")
    text_column: str = _f("text", "the text column of a HF dataset, parquet or jsonl", "data")
    unique_tokens: Optional[int] = _f(None, "data-constrained runs: train on the first U tokens, repeated for as many "
                                      "epochs as the steps need; config.json and metrics.jsonl record the unique "
                                      "tokens and the epochs seen", "data")
    sampling: str = _f("with-replacement", "with-replacement (windows at random offsets) | without-replacement (a "
                       "seeded permutation of fixed n_ctx windows per epoch; metrics rows record the epoch)", "data",
                       choices=SAMPLING)
    batch_size: int = _f(8, "sequences per optimizer step (global)", "schedule")
    grad_accum: int = _f(1, "micro-batches per step; batch_size must divide evenly", "schedule")
    steps: int = _f(200, "optimizer steps", "schedule")
    lr: float = _f(3e-3, "peak learning rate", "schedule")
    min_lr_frac: float = _f(0.1, "the schedule's floor as a fraction of --lr", "schedule")
    warmup: int = _f(20, "linear warmup steps", "schedule")
    schedule: str = _f("cosine", "cosine (Kaplan et al.: warmup, cosine decay to the floor at --steps) | wsd "
                       "(warmup, constant, linear decay to the floor over the last --decay-frac of the steps; "
                       "Hägele et al. 2024) | linear (warmup, linear decay to the floor at --steps) | constant "
                       "(warmup, then --lr to the end; no floor)", "schedule",
                       choices=("cosine", "wsd", "linear", "constant"))
    decay_frac: float = _f(0.2, "wsd: fraction of the steps spent in the final decay (the cooldown)", "schedule")
    weight_decay: float = _f(0.1, "AdamW decoupled weight decay (matmul weights and embeddings only)", "schedule")
    optimizer: str = _f("adamw", "adamw | adafactor (engine/optim.py, the paper's choice above 1B parameters: no first "
                        "moment, factored second moment, its own beta2 schedule; --lr is its step size, as AdamW's)",
                        "schedule", choices=("adamw", "adafactor"))
    adafactor_scale_parameter: bool = _f(False, "adafactor: multiply each step by the parameter's RMS (Shazeer & "
                                         "Stern's relative scaling: --lr is then relative to the weights' scale)",
                                         "schedule")
    beta1: float = _f(0.9, "AdamW beta1", "schedule")
    beta2: float = _f(0.95, "AdamW beta2", "schedule")
    grad_clip: float = _f(1.0, "global gradient-norm clip (0: off)", "schedule")
    eval_every: int = _f(50, "steps between evals and checkpoints")
    eval_batches: int = _f(4, "validation batches per eval")
    eval_data: Optional[str] = _f(None, "NAME=PATH: also evaluate on another corpus (a text file or folder, split off "
                                  "from the training data; PATH 'pydoc' is the English prose of Python's pydoc_data "
                                  "topics); repeatable; metrics rows at evals carry val_loss_NAME", "data", repeat=True)
    eval_positions: bool = _f(False, "at each eval, also the validation loss at every token position, to "
                              "RUN_DIR/positions.jsonl (Kaplan et al. Figure 20); val_loss is then their mean")
    log_every: int = _f(1, "steps between metrics rows")
    tracker: Optional[str] = _f(None, "tensorboard | wandb | none: also log every metrics row, and config.json as "
                                "hyperparameters, to TensorBoard (RUN_DIR/tb/) or Weights & Biases (RUN_DIR/wandb/; "
                                "offline without an API key, WANDB_MODE honoured); repeatable; a tracker that fails "
                                "is a warning, metrics.jsonl stays the record", repeat=True)
    seed: int = _f(1337, "initialisation and data-order seed")
    keep_steps: Optional[str] = _f(None, "comma-separated steps at which to keep a checkpoint copy (ckpt-STEP.pt) "
                                   "that cooldown branches start from")
    init_from: Optional[str] = _f(None, "RUN_DIR@STEP: start from the checkpoint another run kept at STEP (a wsd "
                                  "cooldown branch; its first STEP steps are that run's, bit for bit)")
    backend: str = _f("torch", "torch | triton | cuda")
    device: str = _f("cpu", "cpu, cuda, cuda:1, ...")
    dtype: str = _f("float32", "float32 | bfloat16 | float16 (autocast)", choices=("float32", "bfloat16", "float16"))
    noise_scale: bool = _f(False, "estimate the gradient noise scale (needs --grad-accum >= 2)")
    compile: bool = _f(False, "torch.compile the model (the backend's Triton/CUDA kernels as one custom op each)")
    loss_impl: str = _f("full", "full (logits, then fp32 cross-entropy) | chunked (fused, no full fp32 logits)", choices=("full", "chunked"))
    # Kernel variants a user may pick (no environment variables: each choice is recorded in
    # config.json and the executed FLOP view follows it).  One field per option of
    # flopscale.kernels.BACKEND_OPTIONS, named "<backend>_<option>", default its first value.
    cuda_attention: str = _f("auto", "cuda backend attention: auto (wgmma on Hopper, mma.sync elsewhere) | "
                             "mma_sync (everywhere)", "kernels")
    cuda_ffn_backward: str = _f("split", "cuda backend feedforward backward: split (GEMM + fused elementwise "
                                "kernel, the faster on an H200) | lt_epilogues (cuBLASLt DGELU_BGRAD/BGRADB)",
                                "kernels")
    triton_ffn_loads: str = _f("auto", "triton backend feedforward GEMM loads: auto (TMA descriptors where the "
                               "GPU has them) | pointer (pointer loads only)", "kernels")

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
        if not 0 < self.decay_frac <= 1:
            raise ConfigError(f"decay_frac must lie in (0, 1], got {self.decay_frac}")
        if self.adafactor_scale_parameter and self.optimizer != "adafactor":
            raise ConfigError("--adafactor-scale-parameter goes with --optimizer adafactor")
        if self.optimizer == "adafactor":
            lacks = [f"--{k.replace('_', '-')}" for k in ("beta1", "beta2") if getattr(self, k) != field_default(TrainConfig, k)]
            if lacks:
                raise ConfigError(f"--optimizer adafactor has no {' or '.join(lacks)} (no first moment; its beta2 "
                                  "follows 1 - t^-0.8): leave them at their defaults")
        self.kept_steps()  # parses, or one clear line
        self.eval_corpora()
        self.trackers()
        if self.init_from is not None:
            self.branch_point()
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be positive, got {self.max_tokens}")
        if self.unique_tokens is not None and (self.unique_tokens < 1 or self.max_tokens is not None):
            raise ConfigError("unique_tokens must be positive, and not given with max_tokens (both cap the training "
                              "tokens; --unique-tokens is the data-constrained name)")
        if self.data_vocab is not None and not 2 <= self.data_vocab <= 2 ** 32:
            raise ConfigError(f"n_vocab (--n-vocab) must lie in 2 .. 2^32, got {self.data_vocab}")
        from flopscale.kernels import BACKEND_OPTIONS, BACKENDS

        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        for name in kernel_fields():
            backend, option = name.split("_", 1)
            allowed = BACKEND_OPTIONS[backend][option]
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.tokenizer.startswith("bpe-"):
            v = self.tokenizer[4:]
            if not v.isdigit() or not 257 <= int(v) <= 65535:
                raise ConfigError(f"tokenizer {self.tokenizer!r}: want bpe-V with 257 <= V <= 65535 (byte alphabet, uint16 ids)")

    def kept_steps(self) -> frozenset:
        """The steps of ``keep_steps`` (empty without it)."""
        if not self.keep_steps:
            return frozenset()
        try:
            steps = frozenset(int(x) for x in self.keep_steps.split(","))
        except ValueError:
            raise ConfigError(f"keep_steps must be comma-separated step numbers, got {self.keep_steps!r}") from None
        if any(k < 1 or k > self.steps for k in steps):
            raise ConfigError(f"keep_steps must lie in 1..steps ({self.steps}), got {self.keep_steps!r}")
        return steps

    def branch_point(self) -> tuple:
        """(parent run directory, step) of ``init_from``."""
        run, sep, step = (self.init_from or "").rpartition("@")
        if not sep or not run or not step.isdigit() or int(step) < 1:
            raise ConfigError(f"init_from must be RUN_DIR@STEP, got {self.init_from!r}")
        if int(step) >= self.steps:
            raise ConfigError(f"init_from's step {step} must be below steps ({self.steps})")
        return run, int(step)

    def eval_corpora(self) -> tuple:
        """((name, path), ...) of ``eval_data``."""
        out = []
        for item in (self.eval_data or "").split(","):
            if not item:
                continue
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ConfigError(f"eval_data wants NAME=PATH, got {item!r}")
            if not name.isidentifier() or any(name == n for n, _ in out):
                raise ConfigError(f"eval_data: NAME must be a unique identifier (letters, digits, _), got {name!r}")
            out.append((name, path))
        return tuple(out)

    def trackers(self) -> tuple:
        """The trackers of ``tracker`` (empty without it, or for "none")."""
        names = tuple(t.strip() for t in (self.tracker or "").split(",") if t.strip())
        bad = [t for t in names if t not in TRACKERS]
        if bad:
            raise ConfigError(f"unknown tracker {bad[0]!r}; choose from {', '.join(TRACKERS)} (repeat --tracker for several)")
        if "none" in names and len(names) > 1:
            raise ConfigError("tracker 'none' turns tracking off; it goes alone")
        return tuple(dict.fromkeys(t for t in names if t != "none"))

    def kernel_options(self) -> dict:
        """The options of flopscale.kernels.get_backend for this run's backend (its kernel fields)."""
        from flopscale.kernels import kernel_options_for

        return kernel_options_for(self.backend, **{name: getattr(self, name) for name in kernel_fields()})


def kernel_fields() -> tuple:
    """TrainConfig's kernel-variant fields: one per option of flopscale.kernels.BACKEND_OPTIONS,
    named "<backend>_<option>" (tests check the two stay one to one)."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("group") == "kernels")


def field_default(cls, name: str):
    """The declared default of a config field (the one place defaults live)."""
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


# ---------------------------------------------------------------------------------------------
# The command line, generated from the dataclasses.
# ---------------------------------------------------------------------------------------------
def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, cls, *, only=None, skip=(), defaults=None,
                         required=(), no_defaults: bool = False, titles=None) -> list:
    """Add one flag per field of ``cls`` (``only`` / ``skip`` select fields), in argument groups
    by the fields' ``group``.  ``defaults`` overrides a field's default for this command (the
    flag's help shows it); ``required`` fields get required flags; ``no_defaults``: every flag
    defaults to None (a sweep's overrides: None means "keep the preset's").  Returns the names."""
    defaults, titles = defaults or {}, titles or {}
    groups, names = {}, []
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        g = f.metadata.get("group", "run")
        if g not in groups:
            groups[g] = parser.add_argument_group(titles.get(g, g))
        t, _ = _base_type(f)
        default = None if no_defaults else defaults.get(f.name, f.default)
        help_ = f.metadata.get("help", "")
        if f.metadata.get("repeat"):  # given several times: a list, joined by config_values
            groups[g].add_argument(flag_name(f), dest=f.name, action="append", type=str,
                                   default=None if default is None else [default], help=help_)
        elif t == "bool":
            groups[g].add_argument(flag_name(f), dest=f.name, action="store_true", default=None if no_defaults else default,
                                   help=help_)
        else:
            shown = "" if default is None or no_defaults else f" (default: {default})"
            groups[g].add_argument(flag_name(f), dest=f.name, type=_PARSE[t], default=default,
                                   required=f.name in required, choices=f.metadata.get("choices"),
                                   help=help_ + shown)
        names.append(f.name)
    return names


def config_values(ns: argparse.Namespace, names) -> dict:
    """{field: value} of the parsed flags ``names``, leaving out those that are None."""
    out = {n: getattr(ns, n) for n in names if getattr(ns, n, None) is not None}
    return {n: ",".join(v) if isinstance(v, list) else v for n, v in out.items()}
