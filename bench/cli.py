"""Kernel benchmarks: TFLOP/s, GB/s, fraction of the measured roofline, speedups (GPU only).

    flopscale bench --op all --json bench/results/h100.json
    python -m flopscale.bench.cli --op attention --json /tmp/attention.json

Prints one table per op and, with --json, writes the results document of docs/ARCHITECTURE.md
("File formats").
"""

from __future__ import annotations

import argparse
import sys

OPS = ("attention", "layernorm", "ffn")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--op", choices=OPS + ("all",), default="all",
                        help="which op to benchmark (default: all)")
    parser.add_argument("--json", metavar="OUT", type=str, default=None,
                        help="write the results document (device, versions, peaks, rows) to OUT")


def run_bench(args) -> int:
    import torch

    if not torch.cuda.is_available():
        print("flopscale bench: needs a CUDA GPU and none was found (kernels are checked on CPU "
              "by pytest under TRITON_INTERPRET=1 instead)", file=sys.stderr)
        return 2
    from . import bench_attention, bench_ffn, bench_layernorm
    from .common import fill_speedups, measure_peak, print_table, results_document, save

    modules = {"attention": bench_attention, "layernorm": bench_layernorm, "ffn": bench_ffn}
    ops = OPS if args.op == "all" else (args.op,)
    peak = measure_peak()
    print(f"device {torch.cuda.get_device_name()}: measured bf16 matmul {peak['tflops_bf16']:.0f} "
          f"TFLOP/s, copy {peak['copy_gbps']:.0f} GB/s")
    rows = []
    for op in ops:
        op_rows = fill_speedups(modules[op].run(peak))
        print_table(op_rows)
        rows.extend(op_rows)
        if args.json:  # save as we go: a later op failing or timing out keeps the earlier ones
            save(results_document(peak, rows), args.json)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="flopscale bench", description=__doc__.splitlines()[0])
    add_bench_arguments(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
