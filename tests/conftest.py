"""Shared test set-up.

Triton kernels run on CPU tensors under Triton's interpreter unless a GPU is present; the
variable must be set before triton is first imported.  The tokenizer/token cache goes to one
temporary folder per test session so tests never touch ~/.cache.
"""

import os
import tempfile

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("FLOPSCALE_CACHE", tempfile.mkdtemp(prefix="flopscale-cache-"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
