"""The training loop's fast paths change no number: foreach AdamW is bit for bit the per-tensor
loop on CPU, the chunked fused loss matches F.linear + fp32 cross-entropy, the ledger books one
tuple per pass (its cost does not grow with depth) and the model view does not move with the loss
implementation; device and backend mismatches are one line saying what to do."""

import os
import subprocess
import sys

import pytest
import torch

from flopscale.engine import GPT, FlopLedger, ModelConfig
from flopscale.engine import flops as fl
from flopscale.kernels.cross_entropy import chunk_rows, linear_cross_entropy, linear_cross_entropy_ref


def test_foreach_adamw_is_bit_identical_to_the_loop_on_cpu():
    torch.manual_seed(0)
    init = [torch.randn(37, 19), torch.randn(19)]
    out = {}
    for kw in ({"foreach": False}, {"foreach": True}):
        ps = [p.clone().requires_grad_() for p in init]
        opt = torch.optim.AdamW([{"params": ps[:1], "weight_decay": 0.1}, {"params": ps[1:], "weight_decay": 0.0}],
                                lr=3e-3, betas=(0.9, 0.95), eps=1e-8, **kw)
        g = torch.Generator().manual_seed(1)
        for _ in range(7):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        out[kw["foreach"]] = ps
    assert all(torch.equal(a, b) for a, b in zip(out[False], out[True]))


@pytest.mark.parametrize("N,V,d,chunk", [(42, 431, 24, None), (42, 431, 24, 5), (16, 64, 32, 16)])
def test_chunked_cross_entropy_matches_reference(N, V, d, chunk):
    torch.manual_seed(0)
    h = torch.randn(N, d, requires_grad=True)
    w = torch.randn(V, d, requires_grad=True)
    t = torch.randint(0, V, (N,))
    up = linear_cross_entropy_ref(h, w, t, upcast=True)
    gh_up, gw_up = torch.autograd.grad(up, (h, w))
    ref = linear_cross_entropy_ref(h, w, t)
    gh_ref, gw_ref = torch.autograd.grad(ref, (h, w))
    out = linear_cross_entropy(h, w, t, chunk)
    gh, gw = torch.autograd.grad(out, (h, w))
    err, err_ref = (out.double() - up).abs().item(), (ref.double() - up).abs().item()
    print(f"loss err {err:.2e} (pytorch {err_ref:.2e})")
    assert err <= 2 * err_ref + 1e-6
    for g, g_ref, g_up in ((gh, gh_ref, gh_up), (gw, gw_ref, gw_up)):
        e, e_ref = (g.double() - g_up).abs().max().item(), (g_ref.double() - g_up).abs().max().item()
        print(f"grad err {e:.2e} (pytorch {e_ref:.2e})")
        assert e <= 3 * e_ref + 1e-7
    with torch.no_grad():  # eval: the loss alone
        assert abs(linear_cross_entropy(h, w, t, chunk).item() - ref.item()) < 1e-5


def test_chunk_rows_keeps_a_chunk_of_logits_near_h():
    assert chunk_rows(16384, 50304, 768) == 256  # GPT-2 small, B*T = 16k: 256 x 50k logits
    assert chunk_rows(10, 64, 32) == 8


def test_model_view_unchanged_by_the_chunked_loss_and_losses_close():
    cfg = ModelConfig(n_layer=2, d_model=32, n_heads=2, n_ctx=24, n_vocab=96)
    idx = torch.randint(0, 96, (3, 24), generator=torch.Generator().manual_seed(2))
    res = {}
    for impl in ("full", "chunked"):
        torch.manual_seed(0)
        model = GPT(cfg, loss_impl=impl)
        with FlopLedger() as led:
            _, loss = model(idx, idx)
            loss.backward()
        res[impl] = (loss.item(), led.to_dict(), [p.grad for p in model.parameters()])
    assert res["full"][1] == res["chunked"][1]  # every view: same formulas for the loss row
    assert abs(res["full"][0] - res["chunked"][0]) < 1e-6
    for a, b in zip(res["full"][2], res["chunked"][2]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_ledger_books_one_tuple_per_pass_whatever_the_depth(monkeypatch):
    calls = []
    real = fl.record
    monkeypatch.setattr(fl, "record", lambda out, counts: calls.append(1) or real(out, counts))
    for L in (1, 4):
        cfg = ModelConfig(n_layer=L, d_model=32, n_heads=2, n_ctx=16, n_vocab=64)
        model = GPT(cfg)
        idx = torch.randint(0, 64, (2, 16))
        calls.clear()
        with FlopLedger() as led:
            _, loss = model(idx, idx)
            loss.backward()
        assert len(calls) == 1
        exp = fl.expected_rows(cfg, 2, 16, "model", model.ops.executed, model.ops.books)
        assert {r: (v["fwd"], v["bwd"]) for r, v in led.rows("model").items()} == exp


def _cli(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "flopscale.cli", "train", "--n-layer", "1", "--d-model", "32",
                           "--n-heads", "2", "--n-ctx", "16", "--steps", "1", "--quiet", "--data", __file__,
                           "--tokenizer", "bpe-300", *args], capture_output=True, text=True, env=e, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("args,env,says", [
    (("--device", "cuda"), {}, "--device cpu"),
    (("--backend", "triton"), {"TRITON_INTERPRET": "0"}, "TRITON_INTERPRET=1"),
    (("--backend", "cuda"), {}, "--device cuda"),
])
def test_device_and_backend_mismatch_is_one_line(tmp_path, args, env, says):
    r = _cli(*args, "--out", str(tmp_path / "run"), env=env)
    print(r.stderr)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0]
    assert "Traceback" not in r.stderr and "active drivers" not in r.stderr
