"""Shared fixtures: every test that takes ``device`` runs on the CPU and, when one
is available, on CUDA."""
import zlib

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # A different seed for each test (from its name) but repeatable run to run.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
