"""The paper's other architectures (--arch lstm | universal): N, the ledger's exact counts, the
cost model, training with resume bit for bit on CPU, and the one-line refusals."""

import json
from pathlib import Path

import pytest
import torch

from flopscale.engine import FlopLedger, ModelConfig, TrainConfig, make_model
from flopscale.engine import flops as fl
from flopscale.engine.config import ConfigError
from flopscale.engine.data import stdlib_sample
from flopscale.engine.sweep import run_flops
from flopscale.engine.train import Trainer


def _ledger(model, B, T, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx, tgt = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    with FlopLedger() as led:
        _, loss = model(idx, tgt)
        loss.backward()
    return led


def _as_tuples(led, view):
    return {r: (v["fwd"], v["bwd"]) for r, v in led.rows(view).items()}


@pytest.mark.parametrize("L,d,B,T", [(1, 24, 1, 1), (3, 40, 3, 17), (2, 33, 2, 29)])
def test_lstm_model_view_is_6N_per_token(L, d, B, T):
    cfg = ModelConfig(n_layer=L, d_model=d, n_heads=1, n_ctx=32, n_vocab=97, arch="lstm")
    model = make_model(cfg)
    N = 8 * L * d * d  # W_ih and W_hh, 4d x d each, per layer; biases excluded
    assert cfg.N == N == model.num_params()
    led = _ledger(model, B, T, cfg.n_vocab, seed=L * 10 + T)
    rows = led.rows("model")
    # The lstm row (the gate matmuls) is the only non-embedding row of an LSTM: 2N per token
    # forward, 4N backward, so the model view's C is 6*N*tokens exactly.
    assert rows["lstm"] == {"fwd": 2 * N * B * T, "bwd": 4 * N * B * T}
    assert led.total("model") == 6 * N * B * T
    assert all(rows[r] == {"fwd": 0, "bwd": 0} for r in ("attention_qkv", "attention_mask", "feedforward", "gelu"))
    # element-wise gate math and the two biases per gate element, from the per-element constants
    assert rows["lstm_gates"] == {"fwd": fl.LSTM_GATES_FWD * L * B * T * d, "bwd": fl.LSTM_GATES_BWD * L * B * T * d}
    assert rows["bias"] == {"fwd": 8 * L * B * T * d, "bwd": 8 * L * B * T * d}
    assert led.rows("paper")["lstm"] == rows["lstm"]  # the paper's 6N is exact for an LSTM
    for view in fl.VIEWS:
        assert _as_tuples(led, view) == fl.expected_rows(cfg, B, T, view, model.ops.executed), view


@pytest.mark.parametrize("L,d,H,da,dff,B,T", [(3, 40, 5, 45, 72, 3, 17), (5, 24, 3, 24, 50, 2, 11)])
def test_universal_N_once_C_every_application(L, d, H, da, dff, B, T):
    kw = dict(n_layer=L, d_model=d, n_heads=H, d_attn=da, d_ff=dff, n_ctx=32, n_vocab=61)
    uni, gpt = ModelConfig(**kw, arch="universal"), ModelConfig(**kw)
    model = make_model(uni)
    assert len(model.blocks) == 1
    assert uni.N == 2 * d * (2 * da + dff) == model.num_params()  # the shared block, once
    assert gpt.N == L * uni.N
    led = _ledger(model, B, T, 61, seed=T)
    rows, BT = led.rows("model"), B * T
    want = {  # every application counts, independent of the library's helpers
        "attention_qkv": 2 * BT * d * 3 * da * L,
        "attention_mask": 2 * B * T * (T + 1) * da * L,
        "attention_project": 2 * BT * da * d * L,
        "feedforward": 2 * BT * 2 * d * dff * L,
    }
    for r, f in want.items():
        assert rows[r] == {"fwd": f, "bwd": 2 * f}, r
    assert led.total("model") == 3 * sum(want.values())
    assert led.total("model") > 6 * uni.N * BT  # C and N part ways
    for view in fl.VIEWS:  # the same work as the unshared GPT of that shape
        assert _as_tuples(led, view) == fl.expected_rows(gpt, B, T, view, model.ops.executed), view
    assert fl.forward_flops_per_token(uni) == fl.forward_flops_per_token(gpt)
    assert fl.table1_params(uni)["feedforward"] == 2 * d * dff


def test_cost_model_knows_the_archs():
    tc = TrainConfig(batch_size=4, grad_accum=2, steps=3)
    lstm = ModelConfig(n_layer=2, d_model=24, n_heads=2, n_ctx=16, n_vocab=300, arch="lstm")
    assert run_flops(lstm, tc)["nonembedding"] == 6 * lstm.N * 4 * 16 * 3
    uni = ModelConfig(n_layer=3, d_model=24, n_heads=2, n_ctx=16, n_vocab=300, arch="universal")
    gpt = ModelConfig(n_layer=3, d_model=24, n_heads=2, n_ctx=16, n_vocab=300)
    assert run_flops(uni, tc)["nonembedding"] == run_flops(gpt, tc)["nonembedding"]
    assert run_flops(uni, tc)["all"] < run_flops(gpt, tc)["all"]  # AdamW over fewer weights


def test_lstm_refuses_other_backends():
    cfg = ModelConfig(n_layer=1, d_model=16, n_heads=1, n_ctx=8, n_vocab=50, arch="lstm")
    with pytest.raises(ConfigError, match="--backend torch only"):
        make_model(cfg, backend="triton")
    with pytest.raises(ConfigError, match="arch must be one of"):
        ModelConfig(arch="rnn")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    return stdlib_sample(tmp_path_factory.mktemp("corpus"), n_files=4)


def _rows(out):
    return [json.loads(l) for l in Path(out, "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", ["lstm", "universal"])
def test_resume_bit_identical(arch, small_corpus, tmp_path):
    """Stopped hard after the step-4 checkpoint, then resumed: the same curve and counts bit for
    bit as an uninterrupted run (tests/test_train.py's SIGKILL test, in process)."""
    mc = ModelConfig(n_layer=2, d_model=32, n_heads=2, n_ctx=32, arch=arch)
    tc = TrainConfig(data=small_corpus, tokenizer="bpe-300", batch_size=4, grad_accum=2, steps=8, eval_every=4,
                     warmup=2, noise_scale=True)
    Trainer(mc, tc, tmp_path / "ref", progress=False).run()
    tr = Trainer(mc, tc, tmp_path / "run", progress=False)
    step = tr.train_step

    def killed():
        if tr.step == 6:
            raise RuntimeError("killed")
        return step()

    tr.train_step = killed
    with pytest.raises(RuntimeError, match="killed"):
        tr.run()
    assert len(_rows(tmp_path / "run")) == 6
    Trainer(mc, tc, tmp_path / "run", progress=False).run()
    a, b = _rows(tmp_path / "ref"), _rows(tmp_path / "run")
    assert [r["step"] for r in b] == list(range(1, 9))
    keys = ("train_loss", "val_loss", "flops", "flops_total", "flops_executed", "grad_noise_scale")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    assert a[-1]["train_loss"] < a[0]["train_loss"]
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["arch"] == arch and cfg["N"] == mc.N and "N_counts" in cfg
    if arch == "universal":
        assert "once" in cfg["N_counts"]
    else:
        assert a[-1]["flops"] == 6 * mc.N * a[-1]["tokens"]  # metrics' C for an LSTM is 6ND exactly
