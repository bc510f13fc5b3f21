"""flopscale: fused kernels, exact FLOP accounting and scaling-law fits.

Subpackages: ``flopscale.kernels`` (ops and backends), ``flopscale.engine`` (model, ledger,
data, training), ``flopscale.fitting`` (laws and fits), ``flopscale.bench`` (benchmarks).
"""

__version__ = "0.1.0"
