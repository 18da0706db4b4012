"""Shared fixtures: every test that takes ``device`` runs on the CPU and, when one
is available, on CUDA.

Markers:
  torchscript  the test calls ``torch.jit.script`` on purpose (users still script
               models, so TorchScript stays covered). torch >= 2.13 warns
               "`torch.jit.script` is deprecated" on every call; that one warning is
               filtered in these tests only, so it cannot hide anywhere else.
               Every test that calls torch.jit.script must carry this marker.
"""
import zlib

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# The message torch.jit.script warns with (torch/jit/_script.py): a DeprecationWarning in
# torch 2.13, a FutureWarning from torch 2.14 on.
TORCHSCRIPT_DEPRECATION = [
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning",
    "ignore:`torch.jit.script` is deprecated:FutureWarning",
]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "torchscript: the test calls torch.jit.script on purpose; its deprecation warning is filtered there")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("torchscript") is not None:
            for rule in TORCHSCRIPT_DEPRECATION:
                item.add_marker(pytest.mark.filterwarnings(rule))


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # A different seed for each test (from its name) but repeatable run to run.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
