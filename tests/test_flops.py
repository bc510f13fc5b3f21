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
    assert led.total("model") == 3 * sum(want[r] for r in fl.NONEMBEDDING_ROWS)
    # extra rows are kept apart and non-zero; the paper view has none of them
    assert all(rows[r]["fwd"] > 0 for r in fl.EXTRA_ROWS if r != "optimizer")
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
