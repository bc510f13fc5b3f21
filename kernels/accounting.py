"""Where a launch books the FLOPs it executed: a thread-local stack of sinks (stdlib only).

    sinks = active_sinks()                    # in an autograd Function's forward: capture them
    book(sinks, (("attention_mask", f), ("softmax", s)))            # after the forward launch
    book(sinks, (("attention_mask", b),), backward=True)            # after the backward launch

A sink is anything with ``book_executed(rows, backward)``, ``rows`` a tuple of (row, FLOPs)
pairs in the ledger's row names (engine/flops.py ROWS).  ``engine.flops.FlopLedger`` pushes
itself here on ``__enter__`` and pops itself on ``__exit__``; kernels know nothing of it.

Why at the launch: a launcher knows the tile its kernel ran with only once autotune has picked
it, so the executed view is booked from there, per launch, with the row tuple cached per
(shape, config) by the op.  Backward launches book into the sinks captured when the op's
forward ran (the Function saves them on ctx), so counts land in the ledgers that were open for
the forward even when ``loss.backward()`` runs after the ``with`` block closed, the same
deferred-backward rule as ``engine.flops.record``.
"""

from __future__ import annotations

import contextlib
import threading

_local = threading.local()
# The ledgers of the forward whose backward is running, process-wide: set by the engine's loss
# tap (engine/flops.py) for the backward of a compiled step, whose custom ops cannot carry the
# forward's sinks on a ctx and may run on autograd's device thread (CUDA), where this thread's
# stack is empty.  Cleared when that backward ends.
_backward: tuple = ()


def active_sinks() -> tuple:
    """The sinks open on this thread, innermost last.  A tuple, replaced on push and pop, so a
    Function can keep it without a copy."""
    return getattr(_local, "sinks", ())


def push(sink) -> None:
    _local.sinks = active_sinks() + (sink,)


def pop(sink) -> None:
    _local.sinks = tuple(s for s in active_sinks() if s is not sink)


@contextlib.contextmanager
def scoped(sinks):
    """Make ``sinks`` this thread's open sinks for the block (an autograd Function's backward
    runs its custom op under the sinks its forward captured), then put the stack back."""
    old = active_sinks()
    _local.sinks = tuple(sinks)
    try:
        yield
    finally:
        _local.sinks = old


def set_backward_sinks(sinks) -> None:
    global _backward
    _backward = tuple(sinks)


def backward_sinks() -> tuple:
    """Where a backward launch with no captured sinks books: this thread's open sinks, else
    those of the forward whose backward is running (``set_backward_sinks``)."""
    return active_sinks() or _backward


def book(sinks, rows, backward: bool = False) -> None:
    """Add ``rows`` ((row, FLOPs), ...) to every sink's forward (or backward) counts."""
    for s in sinks:
        s.book_executed(rows, backward)
