"""Builds pydetops._C with CMake (CMakeLists.txt is the one build description).

    pip install --no-build-isolation .        # against the torch already installed
    pip install --no-build-isolation -e .     # editable, for development

Environment knobs: PYDETOPS_CUDA=AUTO|ON|OFF, PYDETOPS_CUDA_ARCHS="80;90" (else
TORCH_CUDA_ARCH_LIST, else the visible GPUs, else Volta..Blackwell + PTX),
PYDETOPS_BUILD_TYPE=Release|Debug|RelWithDebInfo, MAX_JOBS=N, PYDETOPS_VERBOSE=1 (show
each compile command as it runs).
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


def _missing_build_requirements() -> list:
    """What a --no-build-isolation build needs that this environment lacks (pip does not
    install pyproject's build requirements in that mode, and setuptools' own errors
    then name neither cause nor cure, e.g. "invalid command 'bdist_wheel'")."""
    missing = []
    try:  # setuptools >= 70.1 builds wheels itself; older ones need the wheel package
        from setuptools.command.bdist_wheel import bdist_wheel  # noqa: F401
    except ImportError:
        try:
            import wheel  # noqa: F401
        except ImportError:
            missing.append("wheel")
    for module in ("pybind11", "torch"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    return missing
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "pydetops" / "_version.py").read_text()).group(1)


def _isolated_build() -> bool:
    # pip's isolated builds run in a temporary "pip-build-env-*" prefix.
    return "pip-build-env" in sys.prefix or any("pip-build-env" in p for p in sys.path)


def _build_tool(name: str) -> str:
    """The build tool ``name`` (cmake, ninja) of this Python environment if it has one
    (the pip package's), else the one on PATH; a clear exit if there is none."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    try:  # the pip packages also say where their binary is
        module = __import__(name)
        binary = Path(getattr(module, name.upper() + "_BIN_DIR", getattr(module, "BIN_DIR", ""))) / name
        if binary.is_file():
            return str(binary)
    except ImportError:
        pass
    found = shutil.which(name)
    if not found:
        sys.exit(f"pydetops' build needs {name}, which was not found for {sys.executable} nor on PATH: "
                 f"pip install {name}")
    return found


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def run(self):
        missing = [m for m in _missing_build_requirements() if m != "torch"]
        if missing:
            sys.exit(f"pydetops' build needs {', '.join(missing)}, not installed for {sys.executable}: "
                     f"pip install {' '.join(missing)}  (then pip install --no-build-isolation .)")
        super().run()

    def build_extension(self, ext):
        try:
            import torch  # (the build compiles against this torch)
        except ImportError:
            if _isolated_build():
                sys.exit("pydetops must be built WITHOUT build isolation, against the torch you have "
                         "installed (an isolated build environment has no torch). Run:\n"
                         "    pip install --no-build-isolation .")
            sys.exit("pydetops compiles against the torch you have installed, and none was found "
                     f"for {sys.executable}. Install torch, then:\n"
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
        cmake = _build_tool("cmake")
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
        ninja = _build_tool("ninja")
        args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        subprocess.check_call(args)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        build = [cmake, "--build", str(build_dir), "--parallel", jobs]
        if os.environ.get("PYDETOPS_VERBOSE"):
            build.append("--verbose")
        print(f"pydetops: compiling the kernels against torch {torch.__version__} with {jobs} jobs "
              "(several minutes; PYDETOPS_VERBOSE=1 and pip -v show each file)", flush=True)
        subprocess.check_call(build)
        built = out_dir / target.name
        if built.resolve() != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built, target)


# pip runs "dist_info" (metadata) and then "bdist_wheel" / "editable_wheel": all need bdist_wheel.
if any(arg in ("bdist_wheel", "dist_info", "editable_wheel") for arg in sys.argv[1:]):
    _missing = [m for m in _missing_build_requirements() if m == "wheel"]
    if _missing:
        sys.exit("pydetops' build needs the 'wheel' package (or setuptools >= 70.1), not installed for "
                 f"{sys.executable}: pip install wheel  (then pip install --no-build-isolation .)")

setup(
    name="pydetops",
    version=VERSION,
    description="Compiled object-detection ops for PyTorch: drop-in, faster torchvision.ops",
    packages=find_packages(include=["pydetops", "pydetops.*"]),
    ext_modules=[CMakeExtension("pydetops._C")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.10",
    # torch is deliberately not listed: we build against yours. The rest serve the model
    # layer (images, COCO masks and metrics, plots, progress bars).
    install_requires=["numpy", "Pillow", "pycocotools", "matplotlib", "tqdm"],
    # pydetops.onnx (export to standard ONNX ops, checked with onnxruntime); rcnn: selective
    # search proposals (cv2.ximgproc) for R-CNN, SPPNet and Fast R-CNN.
    extras_require={"onnx": ["onnx", "onnxruntime", "onnxscript"], "rcnn": ["opencv-contrib-python-headless"]},
    zip_safe=False,
)
