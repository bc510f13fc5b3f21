"""End-to-end training speed: `flopscale train` steps against a nanoGPT-style loop of the same
shape, batch and dtype, measured in one run.

    python -m flopscale.bench.bench_train                                   # CPU, the small shape
    python -m flopscale.bench.bench_train --threads 1 --compile --compile-ref               # + torch.compile
    python -m flopscale.bench.bench_train --device cuda --shapes gpt2-small,gpt2-medium --dtype bfloat16 \
        --backends torch,triton,cuda --compile --compile-ref --json bench/results/<gpu>_train.json

Work model: the ledger's **model view**, every row (the exact algorithmic FLOPs of one
optimizer step: the Table 1 matmuls, causal attention at 2·T·(T+1)·d_attn per layer and
sequence, the extra rows and the optimizer), so MFU = model FLOPs / (step time × peak) for
both sides: the reference does the same algorithm (same shape, tied embeddings, same AdamW).
The reference is plain PyTorch the way nanoGPT writes it: fused QKV, SDPA causal attention,
GELU(tanh), AdamW fused on CUDA (foreach on CPU), no host sync inside a step, optionally
under `torch.compile`.  Both draw their batches the same way (``Corpus.batch`` per micro-batch,
from the same random token ids: throughput does not depend on the text), so data loading costs
both sides alike and is part of what a step costs.

Timing: ``--warmup`` steps of every provider first (autotune, compile, allocator), then
``--repeats`` windows of ``--steps`` steps per provider, taken in turns (so a shared machine's
load drift hits every provider alike), each window ended by a device sync; the median window is
reported, with every window, the page faults per step and the load average kept in the JSON.
On CPU the Trainer sets glibc's malloc to reuse freed blocks (``train.reuse_freed_cpu_memory``,
process-wide: the reference in the same process runs under it too); before it, fresh pages for
every step's activations cost 10-30 ms of system time per step and most of the run-to-run spread.
``--profile PREFIX`` prints and saves a torch.profiler table of one step of each flopscale provider.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from flopscale.engine import ModelConfig, TrainConfig
from flopscale.engine.data import Corpus
from flopscale.engine.train import PEAK_FLOPS, Trainer
from flopscale.fileio import atomic_write_json, atomic_write_text

SHAPES = {  # name -> (ModelConfig kwargs, micro-batch sequences, grad_accum)
    "cpu-small": (dict(n_layer=4, d_model=128, n_heads=4, n_ctx=128, n_vocab=4096), 8, 1),
    "gpt2-small": (dict(n_layer=12, d_model=768, n_heads=12, n_ctx=1024, n_vocab=50304), 16, 1),
    "gpt2-medium": (dict(n_layer=24, d_model=1024, n_heads=16, n_ctx=1024, n_vocab=50304), 8, 1),
}


# ---------------------------------------------------------------------------------------------
# The reference: a nanoGPT-style GPT of the same architecture as engine/model.py.
# ---------------------------------------------------------------------------------------------
class _RefBlock(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.qkv, self.proj = nn.Linear(c.d_model, 3 * c.d_attn), nn.Linear(c.d_attn, c.d_model)
        self.fc_in, self.fc_out = nn.Linear(c.d_model, c.d_ff), nn.Linear(c.d_ff, c.d_model)
        self.h, self.dh = c.n_heads, c.d_head

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, Dh)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, -1))
        return x + self.fc_out(F.gelu(self.fc_in(self.ln2(x)), approximate="tanh"))


class RefGPT(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c = c
        self.wte, self.wpe = nn.Embedding(c.n_vocab, c.d_model), nn.Embedding(c.n_ctx, c.d_model)
        self.blocks = nn.ModuleList(_RefBlock(c) for _ in range(c.n_layer))
        self.lnf = nn.LayerNorm(c.d_model)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = F.linear(self.lnf(x), self.wte.weight)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved_median_step_s(steps_by_provider: dict, device, warmup: int, steps: int, repeats: int) -> dict:
    """({provider: median seconds per step}, every window's, page faults per step): every provider warms up, then the timed windows
    take turns (provider A's window, B's, ..., then A's again), so drift in the machine's load
    (other jobs on a shared CPU) hits every provider alike."""
    for step in steps_by_provider.values():
        for _ in range(warmup):
            step()
        _sync(device)
    times = {p: [] for p in steps_by_provider}
    faults = {p: 0 for p in steps_by_provider}
    for _ in range(repeats):
        for p, step in steps_by_provider.items():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(device)
            times[p].append((time.perf_counter() - t0) / steps)
            faults[p] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    return ({p: statistics.median(t) for p, t in times.items()}, times,
            {p: f / (repeats * steps) for p, f in faults.items()})


def _random_corpus(vocab: int, n_tokens: int, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, vocab, size=n_tokens, dtype=np.uint16)
    return Corpus(train=toks, val=toks[: max(n_tokens // 10, 4096)], vocab_size=vocab,
                  provenance={"corpus": "random token ids (bench_train)", "n_train_tokens": int(toks.size)})


def flopscale_step(mc: ModelConfig, mb: int, ga: int, backend: str, device: str, dtype: str, corpus: Corpus,
                   workdir: str, compiled: bool, loss_impl: str):
    """(step function, trainer): one `flopscale train` optimizer step, Trainer.train_step itself."""
    tc = TrainConfig(batch_size=mb * ga, grad_accum=ga, steps=10 ** 6, warmup=10, backend=backend, device=device,
                     dtype=dtype, eval_every=10 ** 6, compile=compiled, loss_impl=loss_impl)
    tr = Trainer(mc, tc, workdir, progress=False, corpus=corpus)
    return tr.train_step, tr


def reference_step(mc: ModelConfig, mb: int, ga: int, device: str, dtype: str, corpus: Corpus, compiled: bool):
    dev = torch.device(device)
    torch.manual_seed(0)
    model = RefGPT(mc).to(dev)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    fused = dev.type == "cuda"
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=fused, foreach=not fused)
    fwd = torch.compile(model) if compiled else model
    amp = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    ctx = (lambda: torch.autocast(dev.type, dtype=amp)) if amp else (lambda: torch.autocast(dev.type, enabled=False))
    it = [0]

    def to_dev(t):
        return t.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else t

    def step():
        for m in range(ga):
            x, y = corpus.batch("train", it[0], m, mb, mc.n_ctx, 1)
            with ctx():
                loss = fwd(to_dev(x), to_dev(y))
            (loss / ga).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        it[0] += 1

    return step


def profile_step(step, device: torch.device, out_path: str, rows: int = 25) -> str:
    """A torch.profiler table of one step (self time per op, top ``rows``), also saved as text."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=rows)
    atomic_write_text(out_path, table)
    return table


def peak(device: str, dtype: str):
    if not device.startswith("cuda") or dtype == "float32":
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: float32 on CPU, bfloat16 on CUDA)")
    ap.add_argument("--shapes", default=None, help=f"comma list of {', '.join(SHAPES)} (default: cpu-small on CPU, "
                                                   "gpt2-small,gpt2-medium on CUDA)")
    ap.add_argument("--backends", default="torch", help="flopscale backends to time, comma separated")
    ap.add_argument("--compile", action="store_true", help="also time each flopscale backend with --compile")
    ap.add_argument("--compile-ref", action="store_true", help="also time the reference under torch.compile")
    ap.add_argument("--loss-impl", default="full", help="flopscale's loss: full | chunked")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (per provider)")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed window")
    ap.add_argument("--repeats", type=int, default=5, help="timed windows per provider, interleaved; the median is reported")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--profile", default=None, help="write a torch.profiler table of one step of each flopscale "
                                                    "provider to PREFIX_<shape>_<provider>.txt")
    ap.add_argument("--json", default=None, help="write the results document here")
    a = ap.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but this torch has no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")
    shapes = (a.shapes or ("gpt2-small,gpt2-medium" if a.device.startswith("cuda") else "cpu-small")).split(",")
    pk = peak(a.device, dtype)
    dev = torch.device(a.device)
    load_before = os.getloadavg()
    import tempfile

    rows = []
    for name in shapes:
        kw, mb, ga = SHAPES[name]
        mc = ModelConfig(**kw)
        corpus = _random_corpus(mc.n_vocab, 1 << 20)
        tok = mb * ga * mc.n_ctx
        steps, trainers = {}, {}
        with tempfile.TemporaryDirectory() as d:
            for be in a.backends.split(","):
                for comp in (False, True) if a.compile else (False,):
                    prov = f"flopscale-{be}" + ("+compile" if comp else "")
                    steps[prov], trainers[prov] = flopscale_step(mc, mb, ga, be, a.device, dtype, corpus,
                                                                 f"{d}/{prov}", comp, a.loss_impl)
            steps["reference"] = reference_step(mc, mb, ga, a.device, dtype, corpus, False)
            if a.compile_ref:
                steps["reference+compile"] = reference_step(mc, mb, ga, a.device, dtype, corpus, True)
            before = {p: tr.ledger.total("model", rows="all") for p, tr in trainers.items()}
            n_before = {p: tr.step for p, tr in trainers.items()}
            med, samples, faults = _interleaved_median_step_s(steps, dev, a.warmup, a.steps, a.repeats)
            # every step has the same shape: the model view of one step, from the ledger itself
            flops = {p: (tr.ledger.total("model", rows="all") - before[p]) // (tr.step - n_before[p])
                     for p, tr in trainers.items()}
            if len(set(flops.values())) > 1:
                print(f"warning: the model view of a step differs between providers: {flops}", file=sys.stderr)
            flops_step = next(iter(flops.values()))
            if a.profile:
                for p in trainers:
                    print(f"--- profile of one step: {name} {p}")
                    print(profile_step(steps[p], dev, f"{a.profile}_{name}_{p}.txt"))
        ref_c = med.get("reference+compile")
        for prov, s in med.items():
            rows.append({"shape": name, "model": mc.to_dict(), "N": mc.N, "tokens_per_step": tok, "provider": prov,
                         "dtype": dtype, "step_ms": s * 1e3, "tokens_per_s": tok / s,
                         "window_ms": [1e3 * t for t in samples[prov]],
                         "page_faults_per_step": faults[prov],
                         "model_flops_per_step": flops_step,
                         "mfu": flops_step / s / pk if pk and flops_step else None,
                         "speedup_vs_reference": med["reference"] / s,
                         "speedup_vs_reference_compile": ref_c / s if ref_c else None})
    dev_name = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    load = (load_before, os.getloadavg())
    print(f"device {dev_name}, torch {torch.__version__}, dtype {dtype}, loss {a.loss_impl}; model-view FLOPs, "
          f"every row; load average {load[0][0]:.2f} -> {load[1][0]:.2f} on {os.cpu_count()} cores")
    print(f"{'shape':<13}{'provider':<26}{'ms/step':>10}{'tokens/s':>12}{'MFU':>8}{'x ref':>8}{'x ref+compile':>15}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        rc = f"{r['speedup_vs_reference_compile']:.3f}" if r["speedup_vs_reference_compile"] else "-"
        print(f"{r['shape']:<13}{r['provider']:<26}{r['step_ms']:>10.2f}{r['tokens_per_s']:>12,.0f}{mfu:>8}"
              f"{r['speedup_vs_reference']:>8.3f}{rc:>15}")
    if a.json:
        atomic_write_json(a.json, {"device": dev_name, "torch": torch.__version__, "peak_flops": pk, "rows": rows,
                                   "load_average": {"before": load[0], "after": load[1]}, "cpu_count": os.cpu_count(),
                                   "settings": {"warmup": a.warmup, "steps": a.steps, "repeats": a.repeats,
                                                "threads": torch.get_num_threads(), "loss_impl": a.loss_impl,
                                                "interleaved": True}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
