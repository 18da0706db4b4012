"""Builds pydetops._C with CMake (CMakeLists.txt is the one build description).

    pip install --no-build-isolation .        # against the torch already installed
    pip install --no-build-isolation -e .     # editable, for development

Environment knobs: PYDETOPS_CUDA=AUTO|ON|OFF, PYDETOPS_CUDA_ARCHS="80;90",
PYDETOPS_BUILD_TYPE=Release|Debug|RelWithDebInfo, MAX_JOBS=N.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "pydetops" / "_version.py").read_text()).group(1)


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        try:
            import torch  # noqa: F401  (the build compiles against this torch)
        except ImportError:
            sys.exit("pydetops compiles against the torch you have installed, and none was found "
                     "in this build environment. Install torch, then build without isolation:\n"
                     "    pip install --no-build-isolation .")
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        # CMake always writes _C into the source package, so that a later plain
        # `cmake --build build/cmake` updates an editable install in place;
        # it is then copied to wherever setuptools wants it.
        out_dir = ROOT / "pydetops"
        # A fixed build folder in the source tree keeps rebuilds incremental
        # (pip's editable builds would otherwise start from scratch each time).
        build_dir = Path(os.environ.get("PYDETOPS_BUILD_DIR", ROOT / "build" / "cmake")).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        cmake = shutil.which("cmake") or sys.exit("cmake not found: pip install cmake")
        args = [
            cmake, "-S", str(ROOT), "-B", str(build_dir),
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('PYDETOPS_BUILD_TYPE', 'Release')}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPYDETOPS_VERSION={VERSION}",
            f"-DPYDETOPS_CUDA={os.environ.get('PYDETOPS_CUDA', 'AUTO')}",
        ]
        if os.environ.get("PYDETOPS_CUDA_ARCHS"):
            args.append(f"-DPYDETOPS_CUDA_ARCHS={os.environ['PYDETOPS_CUDA_ARCHS']}")
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        subprocess.check_call(args)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call([cmake, "--build", str(build_dir), "--parallel", jobs])
        built = out_dir / target.name
        if built.resolve() != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built, target)


setup(
    name="pydetops",
    version=VERSION,
    description="Compiled object-detection ops for PyTorch: drop-in, faster torchvision.ops",
    packages=find_packages(include=["pydetops", "pydetops.*"]),
    ext_modules=[CMakeExtension("pydetops._C")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.9",
    install_requires=["numpy"],  # torch is deliberately not listed: we build against yours
    zip_safe=False,
)
