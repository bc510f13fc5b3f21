"""torch.compile and FlopCounterMode over the backends' custom ops (kernels/library.py).

The ledger must be exact under compile (bookings precomputed per shape outside the compiled
region; the Triton launches book from inside their custom ops, the backward ones too, even
when the backward runs after the ledger closed), every Triton op must enter the graph as one
node (fullgraph: no graph break), and FlopCounterMode's count of a step must equal the
executed view's matmul and attention rows: an independent check of what the kernels computed.
"""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from flopscale.engine import GPT, FlopLedger, ModelConfig, TrainConfig
from flopscale.engine.train import Trainer

MATMUL_ROWS = ("attention_qkv", "attention_project", "feedforward", "deembed", "attention_mask")
CFG = ModelConfig(n_layer=2, d_model=32, n_heads=2, n_ctx=24, n_vocab=96)


def _capturing_backend(graphs):
    """AOTAutograd with eager compilers that keep the forward and backward FX graphs: the
    whole compile path (Dynamo, fake tensors, the custom ops' fakes and autograd) without
    Inductor's C++ build, so the test stays fast."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def keep(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    return aot_autograd(fw_compiler=keep, bw_compiler=keep)


def _step(model, idx, ledger_open_for_backward=True):
    led = FlopLedger()
    with led:
        _, loss = model(idx, idx)
        if ledger_open_for_backward:
            loss.backward()
    if not ledger_open_for_backward:
        loss.backward()  # after the with block: the compiled backward books where the tap says
    return loss.detach(), led, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compiled_step_matches_eager_and_books_the_same(backend):
    idx = torch.randint(0, CFG.n_vocab, (2, 20), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    eager = GPT(CFG, backend=backend)
    torch.manual_seed(0)
    comp = GPT(CFG, backend=backend)
    graphs = []
    comp.compile_core(backend=_capturing_backend(graphs), fullgraph=True)
    l0, led0, g0 = _step(eager, idx)
    l1, led1, g1 = _step(comp, idx, ledger_open_for_backward=False)
    print(backend, float(l0), float(l1))
    assert torch.allclose(l0, l1, rtol=1e-6, atol=0)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert led0.to_dict() == led1.to_dict()  # every view, every row, forward and backward
    if backend == "triton":
        fwd, bwd = ({str(n.target) for n in g.graph.nodes if "flopscale" in str(n.target)} for g in graphs[:2])
        assert fwd == {f"flopscale.triton_{op}_fwd.default" for op in ("layer_norm", "add_layer_norm", "attention",
                                                                       "feedforward")}
        assert bwd == {f"flopscale.triton_{op}_bwd.default" for op in ("layer_norm", "attention", "feedforward")}


@pytest.mark.parametrize("backend,loss_impl", [("torch", "full"), ("torch", "chunked"), ("triton", "full")])
def test_flop_counter_equals_executed_matmul_rows(backend, loss_impl):
    torch.manual_seed(0)
    model = GPT(CFG, backend=backend, loss_impl=loss_impl)
    idx = torch.randint(0, CFG.n_vocab, (2, 20))
    with FlopCounterMode(display=False) as fc, FlopLedger() as led:
        _, loss = model(idx, idx)
        loss.backward()
    ex = led.rows("executed")
    booked = sum(ex[r]["fwd"] + ex[r]["bwd"] for r in MATMUL_ROWS)
    counted = fc.get_flop_counts()["Global"]
    print(backend, loss_impl, fc.get_total_flops(), booked, {str(k): v for k, v in counted.items()})
    assert fc.get_total_flops() == booked
    if backend == "triton":  # our kernels are counted, not skipped
        assert any("flopscale.triton_attention_bwd" in str(k) for k in counted)


def test_trainer_compile_inductor_torch_backend(tmp_path):
    """`flopscale train --compile` on CPU (Inductor, the real path): two steps, the ledger the
    same as eager's and the losses within Inductor's rounding.  The slow test of this file
    (Inductor's C++ build, ~40 s on a loaded 2-core machine)."""
    from flopscale.bench.bench_train import _random_corpus

    mc = ModelConfig(n_layer=1, d_model=32, n_heads=2, n_ctx=16, n_vocab=64)
    corpus = _random_corpus(64, 1 << 14)
    out = {}
    for comp in (False, True):
        tc = TrainConfig(batch_size=4, steps=2, eval_every=2, warmup=1, compile=comp, eval_batches=1)
        tr = Trainer(mc, tc, tmp_path / f"run{comp}", progress=False, corpus=corpus)
        tr.run()
        out[comp] = [json.loads(l) for l in (tmp_path / f"run{comp}" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(out[False], out[True]):
        assert (a["flops"], a["flops_total"], a["flops_executed"]) == (b["flops"], b["flops_total"], b["flops_executed"])
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
