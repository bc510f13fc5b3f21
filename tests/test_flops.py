"""Table 1 as code, the ledger's exact model view, and the executed view against FlopCounterMode."""

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from flopscale.engine import GPT, FlopLedger, ModelConfig
from flopscale.engine import flops as fl
from flopscale.engine.config import MODEL_PRESETS


def _flops_json(*args):
    out = subprocess.run([sys.executable, "-m", "flopscale.cli", "flops", "--json", *args],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("preset,N", [("gpt2-small", 84_934_656), ("gpt2-xl", 1_474_560_000)])
def test_cli_table1_exact(preset, N):
    """`flopscale flops --json` against Table 1 written out by hand for the paper's defaults."""
    p = MODEL_PRESETS[preset]
    L, d = p["n_layer"], p["d_model"]
    j = _flops_json("--n-layer", str(L), "--d-model", str(d), "--n-heads", str(p["n_heads"]))
    da, dff, T, V = d, 4 * d, 1024, 50257
    assert j["N"] == N == 2 * d * L * (2 * da + dff)
    assert j["C_forward"] == 2 * N + 2 * L * T * da
    assert j["params"] == {"embed": (V + T) * d, "attention_qkv": L * d * 3 * da, "attention_mask": 0,
                           "attention_project": L * da * d, "feedforward": L * 2 * d * dff, "deembed": 0}
    assert j["forward_flops_per_token"] == {
        "embed": 4 * d, "attention_qkv": 2 * L * d * 3 * da, "attention_mask": 2 * L * T * da,
        "attention_project": 2 * L * da * d, "feedforward": 2 * L * 2 * d * dff, "deembed": 2 * d * V}
    assert all(isinstance(v, int) for v in j["params"].values())
    # model view at T = n_ctx: the mask row is (T+1)/T of the paper's, linear rows equal it
    rows = j["model"]["rows"]
    assert rows["attention_mask"]["fwd"] == 2 * L * T * (T + 1) * da
    assert rows["feedforward"]["fwd"] == T * j["forward_flops_per_token"]["feedforward"]


def test_cli_nondefault_shape():
    j = _flops_json("--n-layer", "3", "--d-model", "96", "--n-heads", "3", "--d-attn", "48", "--d-ff", "200",
                    "--n-ctx", "77", "--n-vocab", "1000")
    assert j["config"]["d_attn"] == 48 and j["config"]["d_ff"] == 200
    assert j["N"] == 2 * 96 * 3 * (2 * 48 + 200)
    assert j["forward_flops_per_token"]["attention_mask"] == 2 * 3 * 77 * 48


def _run(model, B, T, V, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, V, (B, T), generator=g)
    tgt = torch.randint(0, V, (B, T), generator=g)
    with FlopLedger() as led:
        _, loss = model(idx, tgt)
        loss.backward()
    return led


@pytest.mark.parametrize("B,T", [(1, 1), (3, 17), (2, 32)])
def test_ledger_exact_model_view(B, T):
    cfg = ModelConfig(n_layer=3, d_model=48, n_heads=3, d_ff=100, n_ctx=32, n_vocab=97)
    led = _run(GPT(cfg), B, T, cfg.n_vocab, seed=B * 100 + T)
    rows = led.rows("model")
    L, d, da, dff, V, BT = 3, 48, 48, 100, 97, B * T
    # Independent of the library's helpers: the algorithmic count for this batch.
    want = {
        "attention_qkv": 2 * BT * d * 3 * da * L,
        "attention_mask": 2 * B * T * (T + 1) * da * L,  # sum_i 2 i d (QK^T) + 2 i d (AV)
        "attention_project": 2 * BT * da * d * L,
        "feedforward": 2 * BT * 2 * d * dff * L,
        "deembed": 2 * BT * d * V,
    }
    for r, f in want.items():
        assert rows[r] == {"fwd": f, "bwd": 2 * f}, r  # matmul backward exactly 2x forward
    assert led.total("model") == 3 * sum(want[r] for r in fl.NONEMBEDDING_ROWS if r != "lstm")
    # extra rows are kept apart and non-zero; the paper view has none of them
    assert all(rows[r]["fwd"] > 0 for r in fl.EXTRA_ROWS if r not in ("optimizer", *fl.LSTM_ROWS))
    assert all(led.rows("paper")[r] == {"fwd": 0, "bwd": 0} for r in fl.EXTRA_ROWS)
    # the whole ledger equals op_counts x op_multiplicity, every row and view
    for view in fl.VIEWS:
        exp = fl.expected_rows(cfg, B, T, view, GPT(cfg).ops.executed)
        assert {r: (v["fwd"], v["bwd"]) for r, v in led.rows(view).items()} == exp, view


def test_paper_view_uses_n_ctx():
    cfg = ModelConfig(n_layer=2, d_model=32, n_heads=2, n_ctx=16, n_vocab=50)
    led = _run(GPT(cfg), 2, 5, 50, seed=0)
    per_tok = fl.table1_forward_flops_per_token(cfg)
    assert led.rows("paper")["attention_mask"]["fwd"] == per_tok["attention_mask"] * 10
    assert led.total("paper") == 3 * 10 * (fl.forward_flops_per_token(cfg))


def test_forward_only_books_no_backward():
    cfg = ModelConfig(n_layer=1, d_model=16, n_heads=2, n_ctx=8, n_vocab=20)
    m = GPT(cfg)
    with FlopLedger() as led, torch.no_grad():
        m(torch.zeros(2, 8, dtype=torch.long) + 3)
    assert all(v["bwd"] == 0 for v in led.rows("model").values())
    assert led.rows("model")["feedforward"]["fwd"] == 2 * 16 * 2 * 16 * 64


def test_executed_matmuls_match_flop_counter_mode():
    """Torch backend: the executed matmul rows equal FlopCounterMode's count, forward+backward.

    FlopCounterMode counts aten matmuls only (mm, addmm, bmm, baddbmm, sdpa).  It does not see
    the embedding gather and its scatter-add backward, the position add, LayerNorm, softmax,
    GELU, bias adds (addmm's bias is not counted), residual adds, the loss or the optimizer:
    those rows are compared with nothing here.
    """
    cfg = ModelConfig(n_layer=2, d_model=40, n_heads=5, d_ff=72, n_ctx=24, n_vocab=61)
    model = GPT(cfg)
    idx = torch.randint(0, 61, (3, 19))
    counter = FlopCounterMode(display=False)
    with FlopLedger() as led, counter:
        _, loss = model(idx, idx)
        loss.backward()
    ex = led.rows("executed")
    matmul_rows = ("attention_qkv", "attention_mask", "attention_project", "feedforward", "deembed")
    ours = sum(ex[r]["fwd"] + ex[r]["bwd"] for r in matmul_rows)
    assert ours == counter.get_total_flops()
    # eager attention computes the full T x T square, more than the causal model view
    assert ex["attention_mask"]["fwd"] == 4 * 3 * 5 * 19 * 19 * 8 * 2
    assert ex["attention_mask"]["fwd"] > led.rows("model")["attention_mask"]["fwd"]


def test_triton_ledger_books_executed_at_launch():
    """Triton backend (interpreter on CPU): the model and paper views are the torch backend's,
    exactly; the executed view is the precomputed rows of the ops the backend does not book
    plus what every LayerNorm, attention and feedforward launch booked, forward and backward."""
    pytest.importorskip("triton")
    from flopscale.kernels.attention import attention_executed
    from flopscale.kernels.ffn import feedforward_executed
    from flopscale.kernels.layernorm import layer_norm_executed

    cfg = ModelConfig(n_layer=2, d_model=32, n_heads=2, d_ff=48, n_ctx=16, n_vocab=40)
    B, T, L = 2, 13, cfg.n_layer
    torch.manual_seed(0)
    model = GPT(cfg, backend="triton")
    led = _run(model, B, T, cfg.n_vocab, seed=1)
    ref = _run(GPT(cfg), B, T, cfg.n_vocab, seed=1)
    for view in ("paper", "model"):
        assert led.rows(view) == ref.rows(view), view
    ops = model.ops
    want = {r: list(v) for r, v in fl.expected_rows(cfg, B, T, "executed", ops.executed, ops.books).items()}
    launches = [(L, attention_executed(B, cfg.n_heads, T, cfg.d_head, True)),
                (L, feedforward_executed(B * T, cfg.d_model, cfg.d_ff)),
                (1, layer_norm_executed(B * T, cfg.d_model)),
                (2 * L, layer_norm_executed(B * T, cfg.d_model, residual=True))]
    for k, rows in launches:
        for r, (f, b) in rows.items():
            want[r][0] += k * f
            want[r][1] += k * b
    got = led.rows("executed")
    assert {r: [v["fwd"], v["bwd"]] for r, v in got.items()} == want
    assert got["attention_mask"]["fwd"] > led.rows("model")["attention_mask"]["fwd"]  # whole tiles


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("T", [1, 15, 16, 17, 45, 64, 77, 130])
@pytest.mark.parametrize("BM,BN", [(16, 16), (32, 16), (16, 32), (64, 64), (128, 64), (64, 128)])
def test_causal_tile_pairs(T, BM, BN, causal):
    """The one tile-pair count of every backend's executed attention, against an enumeration
    of the tile pairs holding an unmasked score, and against both loop orders the kernels use
    (a program per query tile over key tiles; a program per key tile over query tiles from the
    diagonal), where the tile sizes divide each other as those loops need."""
    from flopscale.kernels.flop_counts import causal_tile_pairs, cdiv

    enum = sum(1 for mb in range(cdiv(T, BM)) for nb in range(cdiv(T, BN))
               if not causal or any(j <= i for i in range(mb * BM, min(mb * BM + BM, T))
                                    for j in range(nb * BN, min(nb * BN + BN, T))))
    assert causal_tile_pairs(T, BM, BN, causal) == enum
    by_rows = sum(cdiv(min(m0 + BM, T) if causal else T, BN) for m0 in range(0, T, BM))
    assert by_rows == enum
    if BN % BM == 0:  # dK/dV loops: from the key tile's own first row, in query-tile steps
        by_cols = sum(cdiv(T - n0 if causal else T, BM) for n0 in range(0, T, BN))
        assert by_cols == enum
