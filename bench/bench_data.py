"""Data at scale: a training run's peak memory against the corpus size, and `data prepare`'s
tokenization throughput.

    python -m flopscale.bench.bench_data                                 # both, CPU; JSON to bench/results/cpu_data.json
    python -m flopscale.bench.bench_data --part rss --big-tokens 200000000 --workdir /scratch/bench_data
    python -m flopscale.bench.bench_data --part prepare --text-mb 8 --json /tmp/prep.json
    python -m flopscale.bench.bench_data --part shards-train --device cuda --json bench/results/<gpu>_data.json  # on a GPU

**Peak RSS** (``--part rss``): llm.c shard sets (version 1, uint16, random ids below 4096) of
``--small-tokens`` (1M) and ``--big-tokens`` (200M, in 100M-token shards) training tokens plus a
1M-token validation shard; the same run (L2-d64, n_ctx 128, 8 sequences, ``--steps`` steps) on
each, every run in its own process, its peak resident set (``ru_maxrss``, anonymous and
file-backed pages alike) read at the end.  ``legacy`` runs reproduce how the corpus was read
before engine/formats.py (every shard copied out of its memmap with ``np.asarray`` and the
copies concatenated: what ``read_shard`` and ``_shard_corpus`` did), for the comparison.

**Throughput** (``--part prepare``): the standard library's sources as a jsonl of documents
(``--text-mb`` of text, 16 MB), tokenized with the engine's stdlib BPE-4096 (``tokenizer.json``):
HF ``tokenizers`` called in a plain loop (``encode`` per document, one thread), the same with
``encode_batch`` (its own thread pool over every core), and ``data prepare`` end to end (units,
spawned workers, part files, the llm.c shards) with 1 and 2 workers.  tiktoken's GPT-2 runs too
where its BPE files are cached (``TIKTOKEN_CACHE_DIR``), else the JSON says why not.  Tokens per
second of wall time, the median of ``--repeats`` rounds in which the providers take turns (a shared
machine's load drift hits each alike); the load average is kept beside the numbers.

**On a GPU** (``--part shards-train``, the issue's GPU check, a few minutes): ``data prepare`` the
standard library (``--text-mb``, stdlib BPE-4096, every core a worker) into llm.c shards, then
``flopscale train`` on those shards (GPT-2 small's shape, n_ctx 1024, 16 sequences, bf16, Triton
backend, chunked loss, ``--train-steps``): the median tokens/s and MFU of its metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flopscale.fileio import atomic_write_json

VOCAB = 4096
SHARD = 100_000_000


def _write_llmc(path: Path, n: int, seed: int) -> None:
    from flopscale.engine.formats import llmc_header

    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(llmc_header(n, 1))
        left = n
        while left:
            k = min(left, 1 << 24)
            f.write(rng.integers(0, VOCAB, k, dtype=np.uint16).tobytes())
            left -= k


def make_shards(folder: Path, n_train: int) -> Path:
    """An llm.c folder: one 1M-token val shard, train shards of up to 100M tokens (kept between calls)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "done").exists():
        _write_llmc(folder / "bench_val_000000.bin", 1_000_000, 0)
        for i, a in enumerate(range(0, n_train, SHARD)):
            _write_llmc(folder / f"bench_train_{i + 1:06d}.bin", min(SHARD, n_train - a), i + 1)
        (folder / "done").write_text("")
    return folder


def _status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) // 1024  # MiB
    return out


def child(data: str, mode: str, steps: int, out: str) -> None:
    """One training run in this process; prints {"maxrss_mib", ...} as JSON."""
    import torch

    from flopscale.engine import ModelConfig, TrainConfig
    from flopscale.engine.data import Corpus, load_corpus
    from flopscale.engine.train import Trainer

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    c = load_corpus(data)
    if mode == "legacy":  # the read before engine/formats.py: np.asarray copies, then one concatenation
        c = Corpus(train=np.concatenate([np.asarray(p, dtype=np.uint16) for p in c.train.parts]),
                   val=np.concatenate([np.asarray(p, dtype=np.uint16) for p in c.val.parts]),
                   vocab_size=c.vocab_size, provenance=c.provenance)
    t_load = time.perf_counter() - t0
    mc = ModelConfig(n_layer=2, d_model=64, n_heads=4, n_ctx=128, n_vocab=c.vocab_size)
    tc = TrainConfig(data=data, batch_size=8, steps=steps, eval_every=steps, eval_batches=2, warmup=2)
    t0 = time.perf_counter()
    Trainer(mc, tc, out, progress=False, corpus=c).run()
    t_train = time.perf_counter() - t0
    print(json.dumps({"mode": mode, "n_train_tokens": c.n_train_tokens, "load_s": round(t_load, 2),
                      "train_s": round(t_train, 2), "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                      **{k.lower() + "_mib_at_end": v for k, v in _status().items() if k != "VmHWM"}}))


def bench_rss(workdir: Path, small: int, big: int, steps: int, legacy: bool) -> dict:
    sets = {"small": make_shards(workdir / f"llmc_{small}", small), "big": make_shards(workdir / f"llmc_{big}", big)}
    env = dict(os.environ, FLOPSCALE_CACHE=str(workdir / "cache"))
    rows = []
    for mode in ("mmap", "legacy") if legacy else ("mmap",):
        for name, folder in sets.items():
            with tempfile.TemporaryDirectory() as run:
                p = subprocess.run([sys.executable, "-m", "flopscale.bench.bench_data", "--child", str(folder),
                                    "--mode", mode, "--steps", str(steps), "--run-dir", run],
                                   capture_output=True, text=True, env=env, timeout=3600)
            if p.returncode:
                raise SystemExit(f"child failed: {p.stderr.strip().splitlines()[-1:]}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["set"] = name
            rows.append(r)
            print(f"{mode:>7} {name:>6} {r['n_train_tokens']:>12,} tokens: peak RSS {r['maxrss_mib']:>6} MiB "
                  f"(load {r['load_s']} s, train {r['train_s']} s)", flush=True)
    by = {(r["mode"], r["set"]): r["maxrss_mib"] for r in rows}
    out = {"rows": rows, "model": "L2-d64, n_ctx 128, batch 8, vocab 4096", "steps": steps,
           "difference_mib": {m: by[(m, "big")] - by[(m, "small")] for m in ("mmap", "legacy") if (m, "big") in by}}
    print(f"peak RSS, big minus small: {out['difference_mib']} MiB", flush=True)
    return out


def _stdlib_jsonl(path: Path, text_mb: float) -> list:
    from flopscale.engine.tokenizer import read_text, stdlib_files

    docs, size = [], 0
    for f in stdlib_files():
        t = read_text(f)
        docs.append(t)
        size += len(t.encode())
        if size >= text_mb * 2 ** 20:
            break
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return docs


def bench_prepare(workdir: Path, text_mb: float, repeats: int = 3) -> dict:
    from tokenizers import Tokenizer

    from flopscale.engine.tokenizer import stdlib_tokenizer
    from flopscale.engine.prepare import _GPT2_FILES, _tiktoken_cache_dir, prepare

    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "stdlib.jsonl"
    docs = _stdlib_jsonl(src, text_mb)
    _, tok_path = stdlib_tokenizer("bpe-4096")
    tok = Tokenizer.from_file(str(tok_path))
    times = {}  # provider -> [seconds per repeat]; the providers take turns, so load drift hits each alike
    counts = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        counts[name] = fn()
        times.setdefault(name, []).append(time.perf_counter() - t0)

    cache = _tiktoken_cache_dir()
    import hashlib
    import shutil

    enc, tiktoken_note = None, None
    if all(os.path.isfile(os.path.join(cache, hashlib.sha1(u.encode()).hexdigest())) for u in _GPT2_FILES):
        import tiktoken

        enc = tiktoken.get_encoding("gpt2")
    else:
        tiktoken_note = f"tiktoken's GPT-2 BPE files are not cached in {cache} (no network here): not measured"
        print(tiktoken_note, flush=True)

    def run_prepare(workers):
        out = workdir / f"prepared_w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        return sum(prepare(str(src), str(out), tokenizer=str(tok_path), workers=workers, progress=False)["n_tokens"].values())

    for _ in range(repeats):
        timed("tokenizers encode_batch (its thread pool)",
              lambda: sum(len(e.ids) + 1 for e in tok.encode_batch(docs, add_special_tokens=False)))
        timed("tokenizers encode, plain loop", lambda: sum(len(tok.encode(d, add_special_tokens=False).ids) + 1 for d in docs))
        if enc is not None:
            timed("tiktoken gpt2 encode_ordinary, plain loop", lambda: sum(len(enc.encode_ordinary(d)) + 1 for d in docs))
        for workers in (1, 2):
            timed(f"data prepare --workers {workers}", lambda: run_prepare(workers))
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"provider": name, "seconds_median": round(med, 3), "seconds": [round(t, 3) for t in ts],
                     "tokens": int(counts[name]), "tokens_per_s": round(counts[name] / med)})
        print(f"{name:<42} {counts[name] / med / 1e6:8.3f} M tokens/s (median of {len(ts)}: {med:.2f} s)", flush=True)
    n = counts["tokenizers encode, plain loop"]
    assert all(counts[f"data prepare --workers {w}"] == n for w in (1, 2)), "prepare's stream: EOT + ids per document"
    return {"text_mib": round(src.stat().st_size / 2 ** 20, 2), "documents": len(docs), "tokenizer": "stdlib bpe-4096",
            "rows": rows, "repeats": repeats, "tiktoken": tiktoken_note}


def bench_shards_train(workdir: Path, text_mb: float, device: str, shape: str, steps: int, workers: int) -> dict:
    """`data prepare` the standard library (stdlib BPE-4096, llm.c shards), then `flopscale train`
    on those shards: tokens/s and MFU from its metrics.jsonl (the median of the steps after the
    first 5: autotune and warmup excluded)."""
    from flopscale.engine.prepare import prepare

    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "stdlib.jsonl"
    if not src.is_file():
        _stdlib_jsonl(src, text_mb)
    t0 = time.perf_counter()
    rec = prepare(str(src), str(workdir / "shards"), tokenizer="bpe-4096", workers=workers, progress=False)
    t_prep = time.perf_counter() - t0
    n_tok = sum(rec["n_tokens"].values())
    print(f"data prepare --workers {workers}: {n_tok:,} tokens in {t_prep:.1f} s ({n_tok / t_prep / 1e6:.2f} M tokens/s)",
          flush=True)
    model = {"gpt2-small": ["--n-layer", "12", "--d-model", "768", "--n-heads", "12", "--n-ctx", "1024"],
             "tiny": ["--n-layer", "1", "--d-model", "32", "--n-heads", "2", "--n-ctx", "64"]}[shape]
    gpu = device.startswith("cuda")
    run_dir = workdir / f"run-{shape}-{device.replace(':', '')}"
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "flopscale.cli", "train", "--data", str(workdir / "shards"), *model,
           "--batch-size", "16" if gpu else "4", "--steps", str(steps), "--eval-every", str(steps), "--eval-batches", "2",
           "--warmup", "2", "--device", device, "--quiet", "--out", str(run_dir)]
    if gpu:
        cmd += ["--dtype", "bfloat16", "--backend", "triton", "--loss-impl", "chunked"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if p.returncode:
        raise SystemExit(f"train failed: {p.stderr.strip().splitlines()[-1:]}")
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()][5:]
    tps = statistics.median(r["tokens_per_s"] for r in rows)
    mfus = [r["mfu"] for r in rows if r["mfu"] is not None]
    mfu = statistics.median(mfus) if mfus else None
    dev = device
    if gpu:
        import torch

        dev = torch.cuda.get_device_name()
    print(f"flopscale train on the prepared shards ({shape}, {dev}): {tps:,.0f} tokens/s, MFU "
          f"{'-' if mfu is None else f'{mfu:.1%}'}", flush=True)
    return {"prepare": {"tokens": n_tok, "seconds": round(t_prep, 2), "workers": workers, "tokenizer": "stdlib bpe-4096",
                        "version": rec["version"]},
            "train": {"device": dev, "shape": shape, "command": " ".join(cmd[1:]), "steps": steps,
                      "tokens_per_s_median": round(tps), "mfu_median": mfu,
                      "note": "median over the steps after the first 5"}}


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = next((int(l.split()[1]) // 2 ** 20 for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal")), None)
    import tokenizers

    return {"device": f"cpu: {cpu}, {len(os.sched_getaffinity(0))} cores, {mem} GiB RAM", "python": platform.python_version(),
            "numpy": np.__version__, "tokenizers": tokenizers.__version__, "loadavg": list(os.getloadavg())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "rss", "prepare", "shards-train"), default="all",
                    help="all = rss and prepare; shards-train (the GPU check): data prepare the stdlib, then train on it")
    ap.add_argument("--device", default="cpu", help="shards-train: the training device (cuda on a GPU box)")
    ap.add_argument("--shape", choices=("gpt2-small", "tiny"), default="gpt2-small", help="shards-train: the model")
    ap.add_argument("--train-steps", type=int, default=30, help="shards-train: training steps")
    ap.add_argument("--workers", type=int, default=max(1, len(os.sched_getaffinity(0))), help="shards-train: prepare workers")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "flopscale_bench_data"),
                    help="shards and text are written here (about 400 MB for 200M tokens) and kept for reruns")
    ap.add_argument("--small-tokens", type=int, default=1_000_000)
    ap.add_argument("--big-tokens", type=int, default=200_000_000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-legacy", action="store_true", help="skip the runs that reproduce the old concatenating read")
    ap.add_argument("--text-mb", type=float, default=16.0)
    ap.add_argument("--repeats", type=int, default=3, help="prepare: rounds of every provider in turn (median reported)")
    ap.add_argument("--json", default="bench/results/cpu_data.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="mmap", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child, a.mode, a.steps, a.run_dir)
        return 0
    wd = Path(a.workdir)
    res = {}
    if a.json and a.part != "all" and Path(a.json).is_file():  # one part again: keep the other's numbers
        res = json.loads(Path(a.json).read_text())
    m = machine()
    res.update({"device": m.pop("device"), "bench": "bench/bench_data.py"})
    for part in ("rss", "prepare", "shards-train"):
        if a.part == part or (a.part == "all" and part != "shards-train"):
            before = m["loadavg"]
            if part == "rss":
                res[part] = bench_rss(wd, a.small_tokens, a.big_tokens, a.steps, not a.no_legacy)
            elif part == "prepare":
                res[part] = bench_prepare(wd / "prepare", a.text_mb, a.repeats)
            else:
                res[part] = bench_shards_train(wd / "shards_train", a.text_mb, a.device, a.shape, a.train_steps,
                                               a.workers)
                res["device"] = res[part]["train"]["device"]
            res[part].update(m, loadavg=before, loadavg_after=list(os.getloadavg()))
            m["loadavg"] = list(os.getloadavg())
    if a.json:
        atomic_write_json(Path(a.json), res)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
