"""Sweep presets: named scaling studies as data (model sizes, token budgets, dataset caps, batch
sizes, schedule), and the grid of runs each expands to.  ``engine/sweep.py`` runs a grid.

    from flopscale.engine.presets import get_preset
    for run in get_preset("cpu-tiny").runs():
        print(run["name"], run["model"], run["train"]["steps"])

A grid is model entries (always; for the scaling presets shapes near a fixed aspect ratio
d_model / n_layer, head dim 16 to 64, as in the paper's section 3; an entry is (n_layer, d_model,
n_heads) or an object of any ModelConfig fields, arch and d_ff included), times dataset caps D
(presets that ask for L(N, D)), times batch sizes (presets that ask for B_crit from the
steps/tokens trade-off), times train variants (named TrainConfig overrides: lr, schedule; a
schedule may be scaled to the area of another's lr curve).  Every run of a preset trains for the
same number of tokens unless the preset says otherwise, so L(N) here is the loss at a fixed token
budget, not at convergence (report.md says so).  A preset may also be a JSON file holding
SweepPreset's fields (``models`` as [n_layer, d_model, n_heads] lists or objects).

cpu-shape, cpu-arch and cpu-lr are the paper's other systems (Figures 5, 7/8/17/20, 21/22); each
one's note says what its grid is.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .config import ConfigError, ModelConfig, TrainConfig
from .rundir import check_run_name
from .schedule import decay_start_step, lr_at


# What a model entry given as an object may set: ModelConfig's fields but the preset's n_ctx and
# the tokenizer's n_vocab.
_MODEL_ENTRY_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig)) - {"n_ctx", "n_vocab"}


def lr_area(train: dict) -> float:
    """The area under a run's learning-rate curve: the sum of ``schedule.lr_at`` over its steps
    (the trainer's own schedule function, so the formula lives in one place)."""
    tc = TrainConfig.from_dict(train)
    return math.fsum(lr_at(t, tc) for t in range(tc.steps))


@dataclass
class SweepPreset:
    """A named scaling study.  ``models`` are (n_layer, d_model, n_heads) tuples or objects of
    ModelConfig fields ({"n_layer", "d_model", "arch", "d_ff", "n_heads", "d_attn"}, the rest
    defaulted); the run's steps are ``tokens // (batch_size * n_ctx)`` for every batch size of
    the grid.  ``variants`` cross the models with named TrainConfig overrides (lr, schedule)."""

    name: str
    description: str
    models: List[object]                   # (n_layer, d_model, n_heads) or {ModelConfig field: value}, smallest first
    n_ctx: int
    tokens: int                            # training tokens of the largest model's runs
    train: Dict[str, object]               # TrainConfig fields shared by every run (batch_size included)
    tokens_exponent: float = 0.0           # smaller models train tokens * (N_max / N)^exponent
    max_tokens: List[Optional[int]] = field(default_factory=lambda: [None])  # dataset caps D (L(N, D))
    batch_sizes: Optional[List[int]] = None  # sequences per step (B_crit from S/E); None: train["batch_size"]
    evals: int = 10                        # evaluations (and checkpoints) per run
    lr_by_size: bool = False               # Kaplan's lr(N) = 0.003239 - 0.0001395 log N, scaled to train["lr"]
    assumed_flops_per_s: float = 15e9      # for --dry-run's wall-time estimate (see the preset's note)
    cpu_threads: Optional[int] = None      # torch threads per CPU run (None: 1)
    n_boot: int = 200                      # bootstrap resamples of the fits at the end (--n-boot overrides)
    note: str = ""
    # An isoFLOP design instead of one token budget: [[C, [indices into models]], ...], C the
    # non-embedding model-view FLOPs of a run (Kaplan's C, the ledger's exact count); each listed
    # size trains round(C / its FLOPs per step) steps.
    budgets: Optional[List[list]] = None
    fixed_tokens: Optional[int] = None     # with budgets: every size also at this many tokens (L(N) at a fixed D)
    # With budgets: one warmup-stable-decay run per size to its longest target, every other target
    # a cooldown branch from a checkpoint of its stable phase (Hägele et al. 2024), instead of
    # one cosine run per target.
    ladder: bool = False
    # Train variants crossed with the models (one token budget only): [{"name": "lr3e-3", TrainConfig
    # field: value, ...}, ...]; run names get "-<name>".  A variant's "models" (indices into models)
    # limits it to those entries; "area_of": NAME scales its peak lr so that the area under its lr
    # curve (lr_area) equals NAME's run's on the same model: schedules at equal area (Kaplan Fig. 21).
    variants: Optional[List[dict]] = None

    def __post_init__(self):
        for m in self.models:
            if isinstance(m, dict):
                bad = set(m) - _MODEL_ENTRY_FIELDS
                if bad or not {"n_layer", "d_model"} <= set(m):
                    raise ConfigError(f"preset {self.name}: a model entry takes n_layer, d_model and any of "
                                      f"{', '.join(sorted(_MODEL_ENTRY_FIELDS - {'n_layer', 'd_model'}))}, got {m}")
            elif not (len(m) == 3 and all(isinstance(x, int) for x in m)):
                raise ConfigError(f"preset {self.name}: a model entry is (n_layer, d_model, n_heads) or an object "
                                  f"of ModelConfig fields, got {m!r}")
        if self.variants is None:
            return
        if self.budgets:
            raise ConfigError(f"preset {self.name}: variants go with one token budget, not with budgets")
        names = [v.get("name") for v in self.variants]
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        for v in self.variants:
            bad = set(v) - train_fields - {"name", "models", "area_of"}
            if not isinstance(v.get("name"), str) or not v["name"] or names.count(v["name"]) > 1 or bad:
                raise ConfigError(f"preset {self.name}: a variant is a unique name and TrainConfig overrides "
                                  f"(plus models, area_of), got {v}")
            check_run_name(v["name"], f"preset {self.name}: variant name")  # it ends run names: one path component
            ref = v.get("area_of")
            if ref is not None and (ref not in names or ref == v["name"]
                                    or self._variant(ref).get("area_of") is not None):
                raise ConfigError(f"preset {self.name}: variant {v['name']}: area_of must name another variant "
                                  f"that has no area_of itself, got {ref!r}")
            if any(not isinstance(i, int) or not 0 <= i < len(self.models) for i in v.get("models", [])):
                raise ConfigError(f"preset {self.name}: variant {v['name']}: models are indices into models")
            if ref is not None and not set(self._variant_models(v)) <= set(self._variant_models(self._variant(ref))):
                raise ConfigError(f"preset {self.name}: variant {v['name']} runs on models its area_of "
                                  f"{ref!r} does not")

    def model_kwargs(self, i: int) -> dict:
        """ModelConfig kwargs of model entry ``i`` (n_ctx the preset's)."""
        m = self.models[i]
        if isinstance(m, dict):
            return dict(m, n_ctx=self.n_ctx)
        L, d, H = m
        return dict(n_layer=L, d_model=d, n_heads=H, n_ctx=self.n_ctx)

    def model_names(self) -> List[str]:
        """Each model entry's part of its runs' names: ``[arch-]L{n_layer}-d{d_model}``, then
        ``-h{n_heads}``, ``-a{d_attn}``, ``-ff{d_ff / d_model}`` for a field that the entry sets to
        other than its default (d_attn, d_ff) or that differs between entries of the same prefix
        (heads too); an LSTM has no attention or feedforward, so no suffixes."""
        cfgs = [ModelConfig(**self.model_kwargs(i)) for i in range(len(self.models))]
        base = [("" if c.arch == "gpt" else f"{c.arch}-") + f"L{c.n_layer}-d{c.d_model}" for c in cfgs]
        names = []
        for i, c in enumerate(cfgs):
            parts = [base[i]]
            for f, show in (("n_heads", lambda c: f"h{c.n_heads}"), ("d_attn", lambda c: f"a{c.d_attn}"),
                            ("d_ff", lambda c: f"ff{c.d_ff / c.d_model:.3g}")):
                if c.arch == "lstm":
                    break
                siblings = {getattr(cfgs[j], f) for j in range(len(cfgs)) if base[j] == base[i]}
                set_here = isinstance(self.models[i], dict) and f != "n_heads" and f in self.models[i] and \
                    getattr(c, f) != getattr(ModelConfig(n_layer=c.n_layer, d_model=c.d_model, n_heads=c.n_heads), f)
                if len(siblings) > 1 or set_here:
                    parts.append(show(c))
            names.append("-".join(parts))
        return names

    def _variant(self, name: str) -> dict:
        return next(v for v in self.variants if v["name"] == name)

    def _variant_models(self, v: dict) -> List[int]:
        return list(v.get("models", range(len(self.models))))

    def runs(self) -> List[dict]:
        """Every run of the grid: {"name", "model": ModelConfig kwargs, "train": TrainConfig kwargs}
        (+ "branch_of": [parent name, step] for a cooldown branch, whose train gets init_from from
        the runner, which knows where the parent's run directory is)."""
        out = self._budget_runs() if self.budgets else self._token_runs()
        names = [check_run_name(r["name"], f"preset {self.name}: run name") for r in out]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"preset {self.name}: run names repeat ({', '.join(dup)}): two model entries or "
                              "variants give the same run")
        return out

    def _token_runs(self) -> List[dict]:
        out = []
        bss = self.batch_sizes or [self.train["batch_size"]]
        mnames = self.model_names()
        n_max = max(ModelConfig(**self.model_kwargs(i)).N for i in range(len(self.models)))
        for i in range(len(self.models)):
            mc = self.model_kwargs(i)
            n = ModelConfig(**mc).N
            tokens = int(self.tokens * (n_max / n) ** self.tokens_exponent)
            for cap in self.max_tokens:
                for bs in bss:
                    ga = int(self.train.get("grad_accum", 1))
                    steps = max(1, tokens // (bs * self.n_ctx))
                    tr = dict(self.train, batch_size=bs, steps=steps,
                              eval_every=max(1, steps // self.evals), max_tokens=cap,
                              warmup=max(1, min(int(self.train.get("warmup", 0)) or steps // 10, steps // 2)))
                    if bs % ga:
                        tr["grad_accum"] = 1
                    if self.lr_by_size:
                        tr["lr"] = self._lr(mc)
                    name = mnames[i] + (f"-D{_si(cap)}" if len(self.max_tokens) > 1 else "") + \
                           (f"-B{bs}" if self.batch_sizes and len(self.batch_sizes) > 1 else "")
                    if self.variants is None:
                        out.append({"name": name, "model": mc, "train": tr})
                        continue
                    for v in self.variants:
                        if i in self._variant_models(v):
                            out.append({"name": f"{name}-{v['name']}", "model": mc, "train": self._variant_train(tr, v)})
        return out

    def _variant_train(self, tr: dict, v: dict) -> dict:
        """The run's TrainConfig kwargs under variant ``v``; with ``area_of``, its peak lr scaled so
        that the area under its lr curve (the sum of schedule.lr_at over the run's steps: the
        trainer's own schedule, one formula) equals that of the named variant's run."""
        out = dict(tr, **{k: x for k, x in v.items() if k not in ("name", "models", "area_of")})
        if v.get("area_of") is not None:
            ref = self._variant_train(tr, self._variant(v["area_of"]))
            # every schedule is lr times a shape (schedule.lr_at), so one rescale makes the areas equal
            out["lr"] = float(out["lr"]) * lr_area(ref) / lr_area(out)
        return out

    def _lr(self, mc: dict) -> float:
        if not self.lr_by_size:
            return float(self.train["lr"])
        # Kaplan et al. eq. (D.1); relative to its value at N = 1e5 so train["lr"] sets the scale
        N = ModelConfig(**mc).N
        k = (0.003239 - 0.0001395 * math.log(N)) / (0.003239 - 0.0001395 * math.log(1e5))
        return float(f"{self.train['lr'] * k:.3g}")

    def _budget_runs(self) -> List[dict]:
        from . import flops as fl

        vocab = _vocab(self.train.get("tokenizer", "bpe-4096"))
        bs = int(self.train["batch_size"])
        evals = max(1, self.evals)
        out = []
        mnames = self.model_names()
        for i in range(len(self.models)):
            mc = self.model_kwargs(i)
            rows = fl.expected_rows(ModelConfig(**mc, n_vocab=vocab), bs, self.n_ctx, "model")
            per_step = sum(rows[r][0] + rows[r][1] for r in fl.NONEMBEDDING_ROWS)  # the same for every step
            targets: Dict[int, str] = {}
            for C, members in self.budgets:
                if i in members:
                    S = max(1, round(float(C) / per_step))
                    targets[S] = "-".join(filter(None, [targets.get(S), f"C{_si_float(float(C))}"]))
            if self.fixed_tokens:
                S = max(1, self.fixed_tokens // (bs * self.n_ctx))
                targets[S] = "-".join(filter(None, [targets.get(S), f"D{_si_float(S * bs * self.n_ctx)}"]))
            if not targets:
                continue
            warmup = max(1, min(int(self.train.get("warmup", 0)) or min(targets) // 10, min(targets) // 5))
            base = dict(self.train, warmup=warmup, lr=self._lr(mc))
            if not self.ladder:
                for S, label in sorted(targets.items()):
                    out.append({"name": f"{mnames[i]}-{label}", "model": mc,
                                "train": dict(base, steps=S, eval_every=max(1, S // evals))})
                continue
            longest = max(targets)
            parent = f"{mnames[i]}-{targets[longest]}"
            wsd = dict(base, schedule="wsd")
            branches = []
            for S, label in sorted(targets.items()):
                if S == longest:
                    continue
                s = decay_start_step(TrainConfig.from_dict(dict(wsd, steps=S)))
                branches.append({"name": f"{mnames[i]}-{label}", "model": mc, "branch_of": [parent, s],
                                 "train": dict(wsd, steps=S, eval_every=max(1, S // evals))})
            keep = ",".join(str(b["branch_of"][1]) for b in branches) or None
            out.append({"name": parent, "model": mc,
                        "train": dict(wsd, steps=longest, eval_every=max(1, longest // evals), keep_steps=keep)})
            out.extend(branches)
        return out


def _vocab(tokenizer: str) -> int:
    """The vocabulary a tokenizer spec gives, for the cost model: bpe-V is V; a tokenizer file's
    size is known only once loaded (the sweep recomputes with the real one), 4096 until then."""
    return int(tokenizer[4:]) if tokenizer.startswith("bpe-") and tokenizer[4:].isdigit() else 4096


def _si_float(x: float) -> str:
    """6e10 -> "60G", 327680 -> "328k": a budget or a token count in a run name."""
    for unit, k in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= k:
            return f"{x / k:.3g}{unit}"
    return f"{x:.3g}"


def _si(n: Optional[int]) -> str:
    if n is None:
        return "all"
    for unit, k in (("G", 10 ** 9), ("M", 10 ** 6), ("k", 10 ** 3)):
        if n >= k and n % (k // 100 or 1) == 0:
            return f"{n / k:g}{unit}"
    return str(n)


# ---------------------------------------------------------------------------------------------
# Presets.  Shapes keep d_model / n_layer near 32 (CPU) or 64 (GPU) and head dim 16-64.
# ---------------------------------------------------------------------------------------------
_CPU_TRAIN = dict(data="stdlib", tokenizer="bpe-4096", batch_size=16, grad_accum=2, lr=3e-3, warmup=40,
                  eval_batches=8, noise_scale=True, device="cpu", backend="torch", dtype="float32")
_CPU_TINY_TRAIN = dict(_CPU_TRAIN, tokenizer="bpe-512", eval_batches=16)
_GPU_TRAIN = dict(data="stdlib", tokenizer="bpe-4096", batch_size=64, grad_accum=2, lr=1e-3,
                  eval_batches=20, noise_scale=True, device="cuda", backend="triton", dtype="bfloat16")
_GPU_MODELS = [(2, 128, 2), (4, 256, 4), (6, 384, 6), (8, 512, 8), (10, 640, 10), (12, 768, 12)]

_PAPER_TRAIN = dict(data="stdlib", tokenizer="bpe-512", batch_size=16, grad_accum=1, lr=3e-3, warmup=40,
                    eval_batches=16, noise_scale=False, device="cpu", backend="torch", dtype="float32")
_PAPER_STEPS = 600    # cpu-shape and cpu-lr; cpu-arch (cheaper per step) trains twice as long
# cpu-shape: three N, each at shapes of n_layer * d_model^2 fixed (N = 12 n_layer d_model^2 at
# d_ff = 4 d_model); then heads and d_ff / d_model at N ~ 197k.
_SHAPE_MODELS = [
    (1, 32, 2), (2, 23, 1), (4, 16, 1), (16, 8, 1),                                   # N 12.3k (2: +3.3%)
    (1, 64, 4), (2, 45, 3), (4, 32, 2), (8, 23, 1), (16, 16, 1),                      # N 49.2k (-1.1%, +3.3%)
    (1, 128, 4), (2, 90, 6), (4, 64, 4), (8, 45, 3), (16, 32, 2),                     # N 197k (-1.1%)
    {"n_layer": 4, "d_model": 64, "n_heads": 1}, {"n_layer": 4, "d_model": 64, "n_heads": 2},
    {"n_layer": 4, "d_model": 64, "n_heads": 8}, {"n_layer": 4, "d_model": 64, "n_heads": 16},
    # d_ff / d_model 0.5, 1, 2, (4), 8 at n_layer 4, d_model chosen to hold N (a first design held
    # d_model and moved n_layer instead, and so measured depth: 8 layers lost 0.5 nats to 2)
    {"n_layer": 4, "d_model": 100, "n_heads": 4, "d_ff": 50}, {"n_layer": 4, "d_model": 90, "n_heads": 3, "d_ff": 90},
    {"n_layer": 4, "d_model": 78, "n_heads": 3, "d_ff": 156}, {"n_layer": 4, "d_model": 50, "n_heads": 2, "d_ff": 400},
]
# cpu-arch: four sizes per family (N: GPT 12.3k-442k; LSTM 8 L d^2, 12.8k-262k; universal 12 d^2, 12.3k-307k).
_ARCH_MODELS = [
    (1, 32, 2), (2, 48, 3), (2, 64, 4), (4, 96, 6),
    {"arch": "lstm", "n_layer": 1, "d_model": 40}, {"arch": "lstm", "n_layer": 1, "d_model": 80},
    {"arch": "lstm", "n_layer": 2, "d_model": 80}, {"arch": "lstm", "n_layer": 2, "d_model": 128},
    {"arch": "universal", "n_layer": 2, "d_model": 32, "n_heads": 2}, {"arch": "universal", "n_layer": 2, "d_model": 64, "n_heads": 4},
    {"arch": "universal", "n_layer": 2, "d_model": 96, "n_heads": 6}, {"arch": "universal", "n_layer": 2, "d_model": 160, "n_heads": 10},
]
_LR_MODELS = [(1, 32, 2), (2, 48, 3), (2, 64, 4), (3, 96, 6)]
_LR_VARIANTS = [{"name": f"lr{x}", "lr": float(x)} for x in ("3e-4", "1e-3", "3e-3", "1e-2", "3e-2")] + [
    {"name": s, "schedule": s, "area_of": "lr3e-3", "models": [1, 2]} for s in ("linear", "wsd", "constant")]

PRESETS: Dict[str, SweepPreset] = {
    "cpu-tiny": SweepPreset(
        name="cpu-tiny",
        description="a whole small scaling study on 2 CPU cores: L(N), L(N, D), Chinchilla, isoFLOP slices, "
                    "the L(C) frontier and B_noise(L), in about 10 minutes",
        # Nine sizes, N 3.1k .. 786k (2.4 decades), d_model / n_layer 16-48 at 1-4 layers, head
        # dim 8-16.  BPE-512: at these widths a 4096-token vocabulary made the de-embedding 54% of
        # all FLOPs (90% for the smallest size); at 512 it is ~25% of the study's compute (the
        # report states the share from the runs).
        models=[(1, 16, 2), (1, 24, 2), (1, 32, 2), (1, 48, 3), (2, 48, 3), (2, 64, 4), (3, 80, 5), (3, 96, 6),
                (4, 128, 8)],
        n_ctx=64, tokens=0, train=_CPU_TINY_TRAIN, evals=8, lr_by_size=True, assumed_flops_per_s=25e9, cpu_threads=1,
        # Four isoFLOP budgets (non-embedding C, the ledger's exact count), each with the sizes that
        # bracket its optimum (pilot runs at 5e10-3e11 put N_opt near 7k-30k) and at least ~100
        # steps; every size also at D = 328k tokens (320 steps: L(N) at a fixed D).  Each size is
        # one wsd run to its longest target, the others cooldown branches of it (Hägele et al.).
        budgets=[[4e10, [0, 1, 2, 3, 4]], [1.3e11, [0, 1, 2, 3, 4, 5]], [4e11, [1, 2, 3, 4, 5, 6, 7]],
                 [1.3e12, [3, 4, 5, 6, 7, 8]]],
        fixed_tokens=320 * 16 * 64, ladder=True,
        note="isoFLOP budgets 4e10, 1.3e11, 4e11, 1.3e12 non-embedding FLOPs over 5-7 sizes each, plus every "
             "size at 328k tokens; one warmup-stable-decay run per size, the other points 20% cooldowns "
             "branched from it; 16 x 64 tokens per step, micro-batches of 8 for the noise scale; stdlib "
             "BPE-512; lr by size (Kaplan eq. D.1); one torch thread per run (use --executor local "
             "--workers 2 on two cores).",
    ),
    "cpu-smoke": SweepPreset(
        name="cpu-smoke",
        description="a set-up check end to end: four tiny runs, about a minute inline on 2 CPU cores",
        # Four sizes of near-equal cost (so two local workers split them evenly), 300 steps of
        # 16 x 64 tokens each; the fit at the end is a smoke test, not a measurement (N spans 0.9
        # decades; 50 bootstrap resamples).  The stdlib corpus at BPE-4096, like the h100 presets.
        models=[(1, 32, 2), (2, 32, 2), (2, 48, 2), (2, 64, 4)],
        n_ctx=64, tokens=300 * 16 * 64, train=_CPU_TRAIN, evals=4, assumed_flops_per_s=25e9, cpu_threads=1,
        n_boot=50,
        note="300 steps of 16 x 64 tokens per size, four evals (and checkpoints) per run; stdlib BPE-4096 "
             "(the first run on a machine also trains the tokenizer, 20-50 s); one torch thread per run. "
             "Try `--executor local --workers 2` or `--executor slurm` with it.",
    ),
    "h100": SweepPreset(
        name="h100",
        description="L(N), L(C) frontier and B_noise(L) up to a GPT-2-small-class model on one H100",
        models=_GPU_MODELS, n_ctx=1024, tokens=200 * 2 ** 20, train=_GPU_TRAIN, evals=20, lr_by_size=True,
        assumed_flops_per_s=0.35 * 989e12,
        note="N 393k .. 85M (2.3 decades), 200M tokens per size at 64 x 1024 tokens per step. The "
             "stdlib corpus holds ~8.9M training tokens, so pass --data with a larger corpus (a folder of "
             "text or .bin shards) to stay single-epoch. Wall-time estimate assumes 35% MFU in bf16.",
    ),
    "h100-nd": SweepPreset(
        name="h100-nd",
        description="L(N, D): four sizes x four dataset caps, early-stopped, on one H100",
        models=[(2, 128, 2), (4, 256, 4), (6, 384, 6), (8, 512, 8)], n_ctx=1024, tokens=100 * 2 ** 20,
        train=_GPU_TRAIN, max_tokens=[2 ** 20, 2 ** 22, 2 ** 24, None], evals=40, lr_by_size=True,
        assumed_flops_per_s=0.35 * 989e12,
        note="100M tokens per run over dataset caps of 1M, 4M, 16M tokens and the whole corpus (repeated "
             "epochs overfit; the best val loss is the early-stopped L(N, D)). Assumes 35% MFU in bf16.",
    ),
    "h100-bcrit": SweepPreset(
        name="h100-bcrit",
        description="B_crit(L): two sizes x six batch sizes (steps/tokens trade-off) plus the noise scale",
        models=[(4, 256, 4), (8, 512, 8)], n_ctx=1024, tokens=100 * 2 ** 20,
        train=_GPU_TRAIN, batch_sizes=[8, 16, 32, 64, 128, 256], evals=40,
        lr_by_size=True, assumed_flops_per_s=0.30 * 989e12,
        note="Batch sizes 8k .. 262k tokens at a fixed 100M-token budget; B_crit from (S, E) to reach "
             "each loss (Kaplan eq. 5.4/5.5) beside B_noise. Assumes 30% MFU (small batches run less efficiently).",
    ),
    # The paper's other systems (issue 13): shapes, architectures, learning rates.  One torch
    # thread per run, two workers on two cores, each preset under 10 minutes from a fresh clone.
    "cpu-shape": SweepPreset(
        name="cpu-shape",
        description="Kaplan et al. Figure 5 on 2 CPU cores: the loss of shapes of equal N (aspect ratio, heads, "
                    "d_ff / d_model) relative to the best shape",
        models=_SHAPE_MODELS, n_ctx=64, tokens=_PAPER_STEPS * 16 * 64, train=_PAPER_TRAIN, evals=4,
        lr_by_size=True, assumed_flops_per_s=25e9, cpu_threads=1, n_boot=50,
        note="Aspect ratio: N = 12.3k, 49.2k and 197k non-embedding parameters (n_layer * d_model^2 = 1024, "
             "4096, 16384, within 3.4% of it), 4-5 shapes each: d_model / n_layer 0.5-32, 1-64 and 2-128. "
             "Heads: L4-d64 (N 197k) with 1, 2, 4, 8, 16 heads (head dim 64 to 4). Feedforward: d_ff / d_model "
             "0.5, 1, 2, 4, 8 at n_layer 4, d_model 100, 90, 78, 64, 50 to hold N at 194k-200k (within 1.7% of "
             f"197k); head dim 25, 30, 26, 16, 25. Every run {_PAPER_STEPS} steps of 16 x 64 tokens (the same "
             "token budget), lr by size (Kaplan eq. D.1, 3e-3 at N = 1e5), cosine; stdlib BPE-512; 4 evals of "
             "16 batches. Read the panels as each shape's final val loss over the best at its N.",
    ),
    "cpu-arch": SweepPreset(
        name="cpu-arch",
        description="Kaplan et al. Figures 7, 8, 17 and 20 on 2 CPU cores: GPT vs LSTM vs universal Transformer "
                    "over N, loss per token position, and a second distribution",
        models=_ARCH_MODELS, n_ctx=64, tokens=2 * _PAPER_STEPS * 16 * 64,
        train=dict(_PAPER_TRAIN, eval_positions=True, eval_data="prose=pydoc"), evals=4,
        lr_by_size=True, assumed_flops_per_s=25e9, cpu_threads=1, n_boot=50,
        note="GPT, LSTM and universal Transformer (one block applied n_layer = 2 times; N counts it once), "
             "four sizes each, N 12k-442k (1.3-1.6 decades per family). Every run "
             f"{2 * _PAPER_STEPS} steps of 16 x 64 tokens, lr by size (Kaplan eq. D.1, 3e-3 at N = 1e5), cosine; "
             "the loss at every token position at each eval (positions.jsonl: Figures 7 and 20) and the "
             "val loss on the prose of pydoc_data/topics.py (val_loss_prose, held out of training: Figure 8); "
             "stdlib BPE-512; 4 evals of 16 batches.",
    ),
    "cpu-lr": SweepPreset(
        name="cpu-lr",
        description="Kaplan et al. Figures 21 and 22 on 2 CPU cores: lr schedules of equal area reach about the same "
                    "loss; the best learning rate against N",
        models=_LR_MODELS, n_ctx=64, tokens=_PAPER_STEPS * 16 * 64, train=_PAPER_TRAIN, evals=4,
        variants=_LR_VARIANTS, assumed_flops_per_s=25e9, cpu_threads=1, n_boot=50,
        note="Best lr vs N: four sizes (N 12k-332k) x five peak lrs 3e-4 .. 3e-2 (two decades, half-decade "
             "steps), cosine to 10% (Kaplan eq. D.1 predicts the optimum falls slowly with N). Equal area: at "
             "L2-d48 and L2-d64, linear, wsd and constant schedules with their peak lr scaled so that the sum of "
             "the lr over the run's steps (engine/schedule.py: lr_at) equals the cosine run's at peak 3e-3 "
             "(lr3e-3), {area}. Every run "
             f"{_PAPER_STEPS} steps of 16 x 64 tokens, warmup 40; stdlib BPE-512; 4 evals of 16 batches.",
    ),
}

# The area every equal-area schedule of cpu-lr matches, stated in its note (the sweep records
# the note in sweep.json; each run's own area is lr_area of its config.json "train").  Filled in
# by get_preset, when the preset is asked for, not at import.
def _area_note(p: SweepPreset) -> str:
    runs = {r["name"]: r["train"] for r in p.runs()}
    ref = {lr_area(runs[f"{m}-lr3e-3"]) for m in ("L2-d48", "L2-d64")}  # the same steps: one area
    peaks = ", ".join(f"{s} {runs[f'L2-d64-{s}']['lr']:.4g}" for s in ("linear", "wsd", "constant"))
    return p.note.format(area=f"{' '.join(f'{a:.6g}' for a in sorted(ref))} (the peaks: cosine 0.003, {peaks})")



# Test-only presets are registered here by tests (a tiny grid that runs in seconds).
_EXTRA_PRESETS: Dict[str, SweepPreset] = {}


def register_preset(p: SweepPreset) -> None:
    """Add a preset by name (tests register tiny ones; users may register their own)."""
    _EXTRA_PRESETS[p.name] = p


def get_preset(name: str) -> SweepPreset:
    allp = {**PRESETS, **_EXTRA_PRESETS}
    if name in allp:
        p = allp[name]
        if name == "cpu-lr" and "{area}" in p.note:
            p.note = _area_note(p)
        return p
    # A preset file: a JSON object with SweepPreset's fields (models as [n_layer, d_model, n_heads]
    # lists or objects of ModelConfig fields)
    p = Path(name)
    if name.endswith(".json") and p.is_file():
        try:
            d = json.loads(p.read_text())
            d["models"] = [m if isinstance(m, dict) else tuple(m) for m in d["models"]]
            return SweepPreset(**d)
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise ConfigError(f"preset file {name}: not a valid sweep preset ({type(e).__name__}: {e})") from None
    raise ConfigError(f"unknown sweep preset {name!r}; choose one of {', '.join(allp)} or a preset .json file")

# Data-constrained scaling (Muennighoff et al. 2023, Figure 3 in small): every run trains the same
# tokens; the unique tokens shrink so that the data repeats 1, 2, 4, 8 and 16 times.
_REPEATS_STEPS = 400
_REPEATS_TOKENS = _REPEATS_STEPS * 16 * 64
PRESETS["cpu-repeats"] = SweepPreset(
    name="cpu-repeats",
    description="Muennighoff et al. 2023 Figure 3 on 2 CPU cores: three sizes at a fixed token budget, the unique "
                "tokens cut so the data repeats 1-16 epochs; the data-constrained law fitted from the runs",
    # N 3.1k, 12k, 98k: 1.5 decades, aspect ratio 16-32, head dim 8-16
    models=[(1, 16, 2), (1, 32, 2), (2, 64, 4)], n_ctx=64, tokens=_REPEATS_TOKENS, train=_CPU_TRAIN, evals=4,
    variants=[{"name": f"ep{e}", "unique_tokens": _REPEATS_TOKENS // e, "sampling": "without-replacement"}
              for e in (1, 2, 4, 8, 16)],
    assumed_flops_per_s=25e9, cpu_threads=1, n_boot=50,
    note=f"{_REPEATS_STEPS} steps of 16 x 64 tokens ({_REPEATS_TOKENS:,} tokens) per run; unique tokens "
         f"{_REPEATS_TOKENS:,} / 1, 2, 4, 8, 16 (the first U tokens of the stdlib BPE-4096 training split), sampled "
         "without replacement so each epoch sees every window once; config.json and metrics.jsonl record "
         "unique_tokens and epochs, and `flopscale fit --law data-constrained` reads U from data.n_train_tokens. "
         "Fifteen points cannot pin seven parameters: read the fit's intervals, and the loss against epochs at each N.",
)
