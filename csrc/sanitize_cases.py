"""One small case of each cuda-backend op under compute-sanitizer (ragged sizes on purpose).

    compute-sanitizer --tool memcheck python csrc/sanitize_cases.py all
    compute-sanitizer --tool racecheck python csrc/sanitize_cases.py attention

Each case runs under both choices of the cuda backend's options: the defaults (attention "auto":
wgmma on sm_90a; ffn_backward "split") and the others (attention "mma_sync", what every other
GPU runs; ffn_backward "lt_epilogues").  The lab's variants are sanitized as lab programs, e.g.
`compute-sanitizer --tool memcheck /tmp/fs_dev/attention_forward 7 check` (bench/gpu_all.sh).
"""
import sys
import torch
from flopscale.kernels import get_backend

OPTIONS = (None, {"attention": "mma_sync", "ffn_backward": "lt_epilogues"})
which = sys.argv[1] if len(sys.argv) > 1 else "all"
dev, bf = "cuda", torch.bfloat16
torch.manual_seed(0)
if which in ("all", "attention"):
    for D in (64, 128):
        for causal in (True, False):
            q, k, v = (torch.randn(1, 2, 45, D, device=dev, dtype=bf, requires_grad=True) for _ in range(3))
            for opts in OPTIONS:
                ops = get_backend("cuda", opts)
                ops.attention(q, k, v, causal).backward(torch.randn(1, 2, 45, D, device=dev, dtype=bf))
if which == "all":
    ops = get_backend("cuda")
    x = torch.randn(37, 200, device=dev, dtype=bf, requires_grad=True)
    r = torch.randn(37, 200, device=dev, dtype=bf, requires_grad=True)
    w = torch.randn(200, device=dev, dtype=bf, requires_grad=True)
    b = torch.randn(200, device=dev, dtype=bf, requires_grad=True)
    ops.layer_norm(x, w, b, 1e-5).sum().backward()
    y, s = ops.add_layer_norm(x, r, w, b, 1e-5)
    (y.float().sum() + s.float().sum()).backward()
    x3 = torch.randn(3, 5, 431, device=dev, dtype=torch.float32, requires_grad=True)  # scalar path
    w3 = torch.randn(431, device=dev, requires_grad=True)
    b3 = torch.randn(431, device=dev, requires_grad=True)
    ops.layer_norm(x3, w3, b3, 1e-5).sum().backward()
    # several warps per row and two rows per CTA (the barrier paths), bf16 vectors and fp32 scalars
    for shape, dt in (((6, 4096), bf), ((5, 1031), torch.float32)):
        xw, rw = (torch.randn(*shape, device=dev, dtype=dt, requires_grad=True) for _ in range(2))
        ww, bw = (torch.randn(shape[-1], device=dev, dtype=dt, requires_grad=True) for _ in range(2))
        yw, sw = ops.add_layer_norm(xw, rw, ww, bw, 1e-5)
        (yw.float().sum() + sw.float().sum()).backward()
        ops.layer_norm(xw.detach(), ww, bw, 1e-5).float().sum().backward()
    xf = torch.randn(37, 64, device=dev, dtype=bf, requires_grad=True)
    params = [torch.randn(*s, device=dev, dtype=bf, requires_grad=True) for s in ((256, 64), (256,), (64, 256), (64,))]
    for opts in OPTIONS:
        get_backend("cuda", opts).feedforward(xf, *params).float().sum().backward()
torch.cuda.synchronize()
print("sanitizer cases done:", which)
