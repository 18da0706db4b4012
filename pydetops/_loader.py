"""Loads pydetops._C and checks it matches the torch that is installed.

A missing or mismatched extension fails here with a message that says what is
wrong and how to rebuild, instead of a later "operator does not exist".
"""
import importlib

import torch

_REBUILD = (
    "Rebuild pydetops against the torch you have:\n"
    "    pip install --no-build-isolation --force-reinstall --no-deps .\n"
    "(from the pydetops source folder; add -e for a development checkout)."
)


def _torch_release(version: str) -> str:
    # "2.13.0+cpu" -> "2.13.0": the local tag does not change the C++ ABI.
    return version.split("+")[0]


def load_extension():
    try:
        ext = importlib.import_module("pydetops._C")
    except ImportError as err:
        raise ImportError(
            f"pydetops' compiled extension pydetops._C could not be loaded ({err}). "
            "It is built when pydetops is installed, against the installed torch "
            f"(now {torch.__version__}); a source checkout on sys.path has no build of its own.\n" + _REBUILD
        ) from err
    built_with = ext.build_info()["torch_version"]
    if _torch_release(built_with) != _torch_release(torch.__version__):
        raise ImportError(
            f"pydetops._C was built against torch {built_with}, but torch {torch.__version__} "
            "is installed; compiled torch extensions only work with the torch they were built for.\n" + _REBUILD
        )
    return ext


def build_info() -> dict:
    """How pydetops._C was built: versions, CUDA on/off and architectures, CPU parallel backend."""
    return importlib.import_module("pydetops._C").build_info()
