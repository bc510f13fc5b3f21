"""Sweep presets: named scaling studies as data (model sizes, token budgets, dataset caps, batch
sizes, schedule), and the grid of runs each expands to.  ``engine/sweep.py`` runs a grid.

    from flopscale.engine.presets import get_preset
    for run in get_preset("cpu-tiny").runs():
        print(run["name"], run["model"], run["train"]["steps"])

A grid is model sizes (always; shapes near a fixed aspect ratio d_model / n_layer, head dim 16
to 64, as in the paper's section 3), times dataset caps D (presets that ask for L(N, D)), times
batch sizes (presets that ask for B_crit from the steps/tokens trade-off).  Every run of a preset
trains for the same number of tokens unless the preset says otherwise, so L(N) here is the loss
at a fixed token budget, not at convergence (report.md says so).  A preset may also be a JSON
file holding SweepPreset's fields (``models`` as [n_layer, d_model, n_heads] lists).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .config import ConfigError, ModelConfig, TrainConfig


@dataclass
class SweepPreset:
    """A named scaling study.  ``models`` are (n_layer, d_model, n_heads); the run's steps are
    ``tokens // (batch_size * n_ctx)`` for every batch size of the grid."""

    name: str
    description: str
    models: List[tuple]                    # (n_layer, d_model, n_heads), smallest first
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

    def runs(self) -> List[dict]:
        """Every run of the grid: {"name", "model": ModelConfig kwargs, "train": TrainConfig kwargs}
        (+ "branch_of": [parent name, step] for a cooldown branch, whose train gets init_from from
        the runner, which knows where the parent's run directory is)."""
        if self.budgets:
            return self._budget_runs()
        out = []
        bss = self.batch_sizes or [self.train["batch_size"]]
        n_max = max(ModelConfig(n_layer=L, d_model=d, n_heads=H).N for L, d, H in self.models)
        for (L, d, H) in self.models:
            n = ModelConfig(n_layer=L, d_model=d, n_heads=H).N
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
                    mc = dict(n_layer=L, d_model=d, n_heads=H, n_ctx=self.n_ctx)
                    if self.lr_by_size:
                        tr["lr"] = self._lr(mc)
                    name = f"L{L}-d{d}" + (f"-D{_si(cap)}" if len(self.max_tokens) > 1 else "") + \
                           (f"-B{bs}" if self.batch_sizes and len(self.batch_sizes) > 1 else "")
                    out.append({"name": name, "model": mc, "train": tr})
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
        from .train import decay_start_step

        vocab = _vocab(self.train.get("tokenizer", "bpe-4096"))
        bs = int(self.train["batch_size"])
        evals = max(1, self.evals)
        out = []
        for i, (L, d, H) in enumerate(self.models):
            mc = dict(n_layer=L, d_model=d, n_heads=H, n_ctx=self.n_ctx)
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
                    out.append({"name": f"L{L}-d{d}-{label}", "model": mc,
                                "train": dict(base, steps=S, eval_every=max(1, S // evals))})
                continue
            longest = max(targets)
            parent = f"L{L}-d{d}-{targets[longest]}"
            wsd = dict(base, schedule="wsd")
            branches = []
            for S, label in sorted(targets.items()):
                if S == longest:
                    continue
                s = decay_start_step(TrainConfig.from_dict(dict(wsd, steps=S)))
                branches.append({"name": f"L{L}-d{d}-{label}", "model": mc, "branch_of": [parent, s],
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
}

# Test-only presets are registered here by tests (a tiny grid that runs in seconds).
_EXTRA_PRESETS: Dict[str, SweepPreset] = {}


def register_preset(p: SweepPreset) -> None:
    """Add a preset by name (tests register tiny ones; users may register their own)."""
    _EXTRA_PRESETS[p.name] = p


def get_preset(name: str) -> SweepPreset:
    allp = {**PRESETS, **_EXTRA_PRESETS}
    if name in allp:
        return allp[name]
    # A preset file: a JSON object with SweepPreset's fields (models as [n_layer, d_model, n_heads] lists)
    p = Path(name)
    if name.endswith(".json") and p.is_file():
        try:
            d = json.loads(p.read_text())
            d["models"] = [tuple(m) for m in d["models"]]
            return SweepPreset(**d)
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise ConfigError(f"preset file {name}: not a valid sweep preset ({type(e).__name__}: {e})") from None
    raise ConfigError(f"unknown sweep preset {name!r}; choose one of {', '.join(allp)} or a preset .json file")
