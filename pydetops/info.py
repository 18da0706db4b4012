"""``python -m pydetops.info``: how pydetops was built and what it runs on."""
import torch

import pydetops


def format_info() -> str:
    info = pydetops.build_info()
    lines = [
        f"pydetops {info['version']}",
        f"  built against torch {info['torch_version']} (running torch {torch.__version__}), "
        f"C++{info.get('cxx_standard', '?')}",
        f"  CUDA kernels: {'on, archs ' + info['cuda_archs'] if info['cuda'] else 'off'}",
        f"  CUDA device available now: {torch.cuda.is_available()}",
        f"  CPU parallel backend: {'OpenMP' if info['openmp'] else 'serial'}, {info['num_threads']} threads",
        "  ops: " + ", ".join(sorted(pydetops.ops.registered_op_names())),
    ]
    return "\n".join(lines)


def main() -> None:
    print(format_info())
    print(pydetops.build_info()["parallel_info"].rstrip())


if __name__ == "__main__":
    main()
