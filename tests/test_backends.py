"""A short training run on the triton backend (under the interpreter on CPU) tracks the torch
backend step for step and books identical model-view FLOPs."""

import pytest

from flopscale.bench.train_backends import compare, track_one
from flopscale.engine.data import stdlib_sample
from flopscale.engine import ModelConfig

pytest.importorskip("triton")


def test_triton_training_tracks_torch(tmp_path):
    mc = ModelConfig(n_layer=2, d_model=32, n_heads=2, d_ff=64, n_ctx=16)
    data = stdlib_sample(tmp_path / "corpus")
    # A small lr keeps Adam's sign-like first updates from amplifying float rounding noise.
    train = dict(batch_size=2, steps=4, eval_every=4, warmup=1, lr=1e-4, device="cpu", dtype="float32")
    res = compare({be: track_one(be, mc, data, tmp_path, **train) for be in ("torch", "triton")})
    tri, ref = res["triton"], res["torch"]
    print("torch ", ref["train_loss"], "\ntriton", tri["train_loss"])
    assert abs(tri["train_loss"][0] - ref["train_loss"][0]) < 1e-5  # same init, same batch
    assert tri["max_abs_loss_gap_vs_torch"] < 1e-4
    assert tri["same_model_flops_as_torch"]
    assert tri["flops_executed"] != ref["flops_executed"]  # flash tiles vs the eager T x T square
