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


@pytest.mark.parametrize("shape", [(2, 3, 17, 8), (1, 4, 64, 32), (3, 2, 5, 40), (1, 1, 1, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_torch_backend_attention_is_the_eager_reference_bit_for_bit(shape, dtype, causal):
    """The torch backend's one-node attention (in-place scale, additive mask) against
    attention_ref under autograd, on strided views of a fused qkv as the model passes them:
    outputs and input gradients equal exactly, and close to a float64 reference."""
    from flopscale.kernels import get_backend
    from flopscale.kernels.attention import attention_ref

    B, H, T, D = shape
    g = torch.Generator().manual_seed(hash((shape, str(dtype), causal)) % 2 ** 31)
    base = torch.randn(B, T, 3, H, D, generator=g).to(dtype)
    dout = torch.randn(B, H, T, D, generator=g).to(dtype)
    got = {}
    for name, fn in (("ref", attention_ref), ("torch", get_backend("torch").attention),
                     ("up", lambda q, k, v, c: attention_ref(q, k, v, c, upcast=True))):
        x = (base.double() if name == "up" else base).clone().requires_grad_()
        q, k, v = x.permute(2, 0, 3, 1, 4)
        o = fn(q, k, v, causal)
        (o * dout.to(o.dtype)).sum().backward()
        got[name] = (o.detach(), x.grad)
    assert torch.equal(got["ref"][0], got["torch"][0]) and torch.equal(got["ref"][1], got["torch"][1])
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    for a, up in zip(got["torch"], got["up"]):
        assert (a.double() - up).abs().max().item() <= tol * max(1.0, up.abs().max().item())


def test_noise_scale_step_reads_the_device_once(tmp_path, monkeypatch):
    """With the noise scale on, a step of 4 micro-batches makes one host read (the stacked
    loss and the two squared norms), not one per micro-batch; its numbers are the float path's."""
    from flopscale.engine import TrainConfig
    from flopscale.engine.noise import MicroBatchNorms
    from flopscale.engine.train import Trainer

    mc = ModelConfig(n_layer=1, d_model=32, n_heads=2, n_ctx=16)
    tc = TrainConfig(data=__file__, tokenizer="bpe-300", batch_size=8, grad_accum=4, steps=3, warmup=1,
                     noise_scale=True, eval_every=100)
    tr = Trainer(mc, tc, str(tmp_path / "run"), progress=False)
    tr.train_step()  # warm
    reads = []  # reads made by flopscale's own code (torch's AdamW reads its CPU step counters)
    root = os.path.dirname(os.path.dirname(torch.__file__))

    def spy(name, orig):
        def read(self, *a):
            caller = sys._getframe(1).f_code.co_filename
            if "flopscale" in caller or not caller.startswith(root):
                reads.append(name)
            return orig(self, *a)
        return read

    for name in ("item", "tolist", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    tr.train_step()
    monkeypatch.undo()
    assert reads == ["tolist"], reads
    # the tensor sums are the float sums
    w = torch.randn(5, 3, requires_grad=True)
    norms = MicroBatchNorms([w], 3)
    for i in range(3):
        (w * (i + 1)).pow(2).sum().div(3).backward()
        norms.after_backward()
    assert norms.mean_sq == float(norms.mean_sq_tensor) and norms.mean_sq > 0


def test_a_usage_error_is_one_line(capsys):
    from flopscale.cli import main

    for argv in (["train", "--arch", "rnn", "--n-layer", "1", "--d-model", "8", "--out", "x"], ["bogus"],
                 ["train", "--n-layer", "1"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and ": error: " in err[0] and "--help" in err[0], err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_cpu_trainer_keeps_freed_memory_for_reuse():
    """On glibc the CPU trainer's mallopt applies (bench_train records the page faults it saves)."""
    from flopscale.engine.train import reuse_freed_cpu_memory

    assert reuse_freed_cpu_memory() is True
