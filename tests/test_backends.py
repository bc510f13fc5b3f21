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


# ---------------------------------------------------------------------------------------------
# Kernel options: declared once (BACKEND_OPTIONS), checked, recorded.
# ---------------------------------------------------------------------------------------------
def test_backend_options_checked_and_cached():
    from flopscale.kernels import BACKEND_OPTIONS, get_backend

    assert get_backend("triton") is get_backend("triton", {"ffn_loads": "auto"})  # defaults filled in
    pointer = get_backend("triton", {"ffn_loads": "pointer"})
    assert pointer is not get_backend("triton") and pointer is get_backend("triton", {"ffn_loads": "pointer"})
    assert dict(pointer.options) == {"ffn_loads": "pointer"}
    for name, opts, match in (("cuda", {"attention": "wgmma3"}, "option attention='wgmma3' is not one of auto, mma_sync"),
                              ("torch", {"attention": "auto"}, "backend 'torch' has no option 'attention'"),
                              ("triton", {"ffn_load": "auto"}, "has no option 'ffn_load'; its options: ffn_loads")):
        with pytest.raises(ValueError, match=match) as e:
            get_backend(name, opts)  # checked before the backend loads (cuda: before _C)
        assert "\n" not in str(e.value)
    assert all(values[0] for opts in BACKEND_OPTIONS.values() for values in opts.values())


def test_kernel_options_for_run_fields():
    from flopscale.kernels import kernel_options_for, option_fields

    fields = dict(cuda_attention="mma_sync", cuda_ffn_backward="lt_epilogues", triton_ffn_loads="pointer")
    assert set(option_fields()) == set(fields)
    assert kernel_options_for("cuda", **fields) == {"attention": "mma_sync", "ffn_backward": "lt_epilogues"}
    assert kernel_options_for("triton", **fields) == {"ffn_loads": "pointer"}
    assert kernel_options_for("torch", **fields) == {}
    with pytest.raises(ValueError, match="unknown kernel option field 'cuda_attn'"):
        kernel_options_for("cuda", cuda_attn="auto")
    with pytest.raises(ValueError, match="is not one of auto, mma_sync"):
        kernel_options_for("cuda", cuda_attention="sm90")


def test_gpt_passes_kernel_options_and_describe_records_them():
    import torch

    from flopscale.engine import GPT

    mc = ModelConfig(n_layer=1, d_model=32, n_heads=2, d_ff=64, n_ctx=8, n_vocab=20)
    model = GPT(mc, backend="triton", kernel_options={"ffn_loads": "pointer"})
    assert dict(model.ops.options) == {"ffn_loads": "pointer"}
    model(torch.zeros(1, 8, dtype=torch.long))
    d = model.ops.describe()
    print(d)
    assert d["backend"] == "triton" and d["options"] == {"ffn_loads": "pointer"}
    assert {"_attention_fwd_kernel", "_ffn_matmul_kernel"} <= set(d["autotune"])  # the configs that ran
    assert "BLOCK_M: 16" in d["autotune"]["_attention_fwd_kernel"][0]
    assert GPT(mc).ops.describe() == {"backend": "torch", "options": {}, "attention": "eager"}


# ---------------------------------------------------------------------------------------------
# A backend this machine cannot run: one clear line, no driver message, no traceback.
# ---------------------------------------------------------------------------------------------
def test_triton_without_gpu_or_interpreter_says_what_to_do():
    import os
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the backend loads")
    code = ("from flopscale.kernels import get_backend\n"
            "try:\n    get_backend('triton')\nexcept RuntimeError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    print(out.stdout, out.stderr)
    assert out.returncode == 0 and out.stdout.count("\n") == 1
    assert "TRITON_INTERPRET=1" in out.stdout and "GPU" in out.stdout
    assert "active drivers" not in out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------
# Layers point one way (docs/ARCHITECTURE.md): kernels/ never imports engine/, not even inside a function;
# fitting/ imports nothing of the project but flopscale.fileio.
# ---------------------------------------------------------------------------------------------
_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _imports(path):
    """(module, names) of every import in the file, function-local ones included; a relative
    import's module is spelled with its leading dots."""
    import ast

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, ()
        elif isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or ""), tuple(a.name for a in node.names)


def _project_targets(path, package):
    """The project modules a file of ``package`` (kernels, fitting) imports, as dotted names
    under flopscale (relative imports resolved against the package)."""
    for mod, names in _imports(path):
        if mod.startswith("."):
            level = len(mod) - len(mod.lstrip("."))
            base = ["flopscale", package][: 2 - (level - 1)] if level <= 2 else []
            rest = mod.lstrip(".")
            full = ".".join(base + ([rest] if rest else []))
        elif mod == "flopscale" or mod.startswith("flopscale."):
            full = mod
        elif mod.split(".")[0] in ("engine", "kernels", "fitting", "bench"):
            full = "flopscale." + mod  # a bare top-level spelling of a project folder
        else:
            continue
        if full in ("flopscale", "flopscale." + package) and names:
            for n in names:  # from flopscale import engine / from . import accounting
                yield f"{full}.{n}"
        else:
            yield full


@pytest.mark.parametrize("path", sorted((_ROOT / "kernels").glob("*.py")), ids=lambda p: p.name)
def test_kernels_import_no_engine(path):
    bad = [m for m in _project_targets(path, "kernels") if m.split(".")[1:2] == ["engine"]]
    assert not bad, f"kernels/{path.name} imports {bad}: kernels/ sits below engine/"


def test_fitting_imports_only_fileio():
    bad = {}
    for path in sorted((_ROOT / "fitting").glob("*.py")):
        for m in _project_targets(path, "fitting"):
            if not (m == "flopscale.fileio" or m.startswith("flopscale.fileio.")
                    or m == "flopscale.fitting" or m.startswith("flopscale.fitting.")):
                bad.setdefault(path.name, []).append(m)
    assert not bad, f"fitting/ imports other parts of the project: {bad}"


def test_import_walker_sees_function_local_and_relative_imports(tmp_path):
    p = tmp_path / "mod.py"
    p.write_text("def f():\n    from flopscale.engine.flops import LN_FWD\n"
                 "def g():\n    from ..engine import flops\n    from . import accounting\n"
                 "    from .. import fileio\n")
    got = list(_project_targets(p, "kernels"))
    assert got == ["flopscale.engine.flops", "flopscale.engine", "flopscale.kernels.accounting",
                   "flopscale.fileio"], got
