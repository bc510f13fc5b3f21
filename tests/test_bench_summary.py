"""bench/summary.py turns one results document into the issue-target table (no GPU needed)."""

from flopscale.bench.common import fill_speedups, make_row
from flopscale.bench.summary import summarize

PEAK = {"tflops_bf16": 800.0, "copy_gbps": 4000.0}


def test_summary_ratios_come_from_rows_of_the_same_document():
    shape = {"rows": 16384, "C": 1024}
    nbytes = 4 * 16384 * 1024
    rows = [make_row("layernorm", "cuda", shape, "bfloat16", "fwd", 0.025, None, nbytes, PEAK),
            make_row("layernorm", "copy", shape, "bfloat16", "fwd", 0.020, None, nbytes, PEAK),
            make_row("layernorm", "torch", shape, "bfloat16", "bwd", 0.120, None, 6 * 16384 * 1024, PEAK),
            make_row("layernorm", "cuda", shape, "bfloat16", "bwd", 0.080, None, 6 * 16384 * 1024, PEAK)]
    att = {"B": 4, "H": 16, "T": 4096, "D": 128, "causal": True}
    rows += [make_row("attention", be, att, "bfloat16", "fwd+bwd", ms, 1e12, None, PEAK)
             for be, ms in (("cuda", 4.0), ("sdpa-cudnn", 3.0), ("sdpa-flash", 5.0))]
    doc = {"device": "GPU", "torch": "t", "triton": "tr", "peak": PEAK, "rows": fill_speedups(rows)}
    table = summarize(doc)
    bw = nbytes / 0.025 / 1e6 / PEAK["copy_gbps"]
    assert f"| layernorm fwd C=1024: fraction of copy bandwidth | cuda | {bw:.2f} |" in table
    assert "| layernorm fwd C=1024: x a same-size copy's time | cuda | 0.80 |" in table
    assert "| layernorm bwd C=1024: x torch eager | cuda | 1.50 |" in table
    # attention against the faster SDPA backend (cuDNN here): 3.0 / 4.0
    assert "| attention fwd+bwd D=128 T=4096: x best SDPA (250 TFLOP/s) | cuda | 0.75 | >=0.8 |" in table
