"""The reference's CUDA kernels, built from their PyPI source distributions for this GPU only.

mamba-ssm 2.3.2.post1's ``selective_scan_cuda`` and causal-conv1d 1.7.0's ``causal_conv1d_cuda`` ship on PyPI as
source only; a full install compiles them for nine architectures (tens of minutes). Here each extension is
compiled with ``torch.utils.cpp_extension.load`` for this GPU's architecture alone, with the package's own nvcc
flags, into a build folder that a later process reuses (ninja finds nothing to do and the module just loads).
The packages' Python code is then imported from the unpacked source without running their ``__init__``
(mamba-ssm's imports its whole model zoo): :func:`install_reference_packages`.

    python benchmarks/_cuda_ext.py --mamba-ssm-src SRC [--causal-conv1d-src SRC] --build-dir DIR [--only mamba_ssm]

builds (the same call in two processes, ``--only`` each, builds both at once); ``SRC`` is an unpacked sdist or
its ``.tar.gz`` (unpacked beside the build folder).

A lent GPU machine starts bare, and these builds take about 290 s of a 10-minute call. So a build can be kept and
carried to the next call: with ``ARMVISION_CUDA_EXT_SAVE=DIR`` each freshly built module is also written to DIR as
``NAME-KEY.so.xz`` (KEY: torch version and GPU architecture, e.g. ``torch2.11.0_cu130-sm90``); with
``ARMVISION_CUDA_EXT_PREBUILT=DIR`` a module whose ``NAME-KEY.so.xz`` (or ``.so``) is in DIR is loaded from there
instead of compiled. A file for another torch or architecture is ignored, so a stale one costs a build, not a crash.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import time
import types
from pathlib import Path

NVCC_FLAGS = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__", "--expt-relaxed-constexpr",
              "--expt-extended-lambda", "--use_fast_math"]


def unpacked(src: Path, into: Path) -> Path:
    """``src`` itself if it is a folder; a ``.tar.gz`` sdist is unpacked under ``into`` (once) and its folder
    returned."""
    src = Path(src)
    if src.is_dir():
        return src
    if not src.name.endswith(".tar.gz"):
        raise SystemExit(f"{src}: expected an unpacked sdist folder or its .tar.gz")
    into.mkdir(parents=True, exist_ok=True)
    folder = into / src.name[: -len(".tar.gz")]
    if not folder.is_dir():
        with tarfile.open(src) as tar:
            tar.extractall(into, filter="data")
    return folder


def package_version(src: Path) -> str:
    info = (src / "PKG-INFO").read_text() if (src / "PKG-INFO").is_file() else ""
    return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Version:")), "?")


def prebuilt_key() -> str:
    """What a built module depends on: the torch build and the GPU architecture (file-name safe)."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"torch{torch.__version__}-sm{major}{minor}".replace("+", "_")


def _load_prebuilt(name: str, build_dir: Path):
    """The module from ``$ARMVISION_CUDA_EXT_PREBUILT`` if a file for this torch and GPU is there, else None."""
    import importlib.machinery
    import importlib.util
    import lzma

    folder = os.environ.get("ARMVISION_CUDA_EXT_PREBUILT")
    if not folder:
        return None
    stem = f"{name}-{prebuilt_key()}"
    packed, plain = Path(folder) / f"{stem}.so.xz", Path(folder) / f"{stem}.so"
    if not packed.is_file() and not plain.is_file():
        print(f"{name}: no prebuilt {stem}.so(.xz) in {folder}; building", flush=True)
        return None
    target = build_dir / f"{name}.so"
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        if packed.is_file():
            with lzma.open(packed) as f_in:
                target.write_bytes(f_in.read())
        else:
            target.write_bytes(plain.read_bytes())
        loader = importlib.machinery.ExtensionFileLoader(name, str(target))
        spec = importlib.util.spec_from_file_location(name, str(target), loader=loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    except (lzma.LZMAError, EOFError, ImportError, OSError) as e:  # a damaged or foreign file: build instead
        target.unlink(missing_ok=True)
        print(f"{name}: the prebuilt file in {folder} cannot be loaded ({type(e).__name__}: {e}); building",
              flush=True)
        return None
    print(f"{name}: loaded prebuilt {packed if packed.is_file() else plain}", flush=True)
    return module


def _save_prebuilt(name: str, build_dir: Path) -> None:
    import lzma

    folder = os.environ.get("ARMVISION_CUDA_EXT_SAVE")
    built = build_dir / f"{name}.so"
    if not folder or not built.is_file():
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    out = Path(folder) / f"{name}-{prebuilt_key()}.so.xz"
    if out.is_file():
        return
    tmp = out.with_name(out.name + ".tmp")
    with lzma.open(tmp, "wb", preset=6) as f_out:
        f_out.write(built.read_bytes())
    tmp.replace(out)
    print(f"{name}: saved {out} ({out.stat().st_size / 2**20:.1f} MiB)", flush=True)


def _load(name: str, sources: list[Path], include: Path, build_dir: Path):
    import torch
    from torch.utils.cpp_extension import load

    module = _load_prebuilt(name, build_dir)
    if module is not None:
        return module
    major, minor = torch.cuda.get_device_capability()
    os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    build_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ext = load(name=name, sources=[str(p) for p in sources], build_directory=str(build_dir),
               extra_include_paths=[str(include)], extra_cflags=["-O3", "-std=c++17"],
               extra_cuda_cflags=NVCC_FLAGS)
    print(f"{name} for sm_{major}{minor} ready in {time.time() - t0:.0f} s ({build_dir})", flush=True)
    _save_prebuilt(name, build_dir)
    return ext


def build_selective_scan(src: Path, build_dir: Path):
    """mamba-ssm's ``selective_scan_cuda`` extension module (compiled, or loaded from ``build_dir``)."""
    csrc = src / "csrc" / "selective_scan"
    sources = [csrc / "selective_scan.cpp", *sorted(csrc.glob("selective_scan_*.cu"))]
    if len(sources) < 2:
        raise SystemExit(f"{csrc}: no selective_scan sources; pass the unpacked mamba-ssm sdist")
    return _load("selective_scan_cuda", sources, csrc, build_dir / "selective_scan_cuda")


def build_causal_conv1d(src: Path, build_dir: Path):
    """causal-conv1d's ``causal_conv1d_cuda`` extension module (compiled, or loaded from ``build_dir``)."""
    csrc = src / "csrc"
    sources = [csrc / "causal_conv1d.cpp", *sorted(csrc.glob("causal_conv1d_*.cu"))]
    if len(sources) < 2:
        raise SystemExit(f"{csrc}: no causal_conv1d sources; pass the unpacked causal-conv1d sdist")
    return _load("causal_conv1d_cuda", sources, csrc, build_dir / "causal_conv1d_cuda")


def install_reference_packages(mamba_src: Path, conv_src: Path | None, build_dir: Path,
                               scan_ext=None, conv_ext=None) -> dict:
    """Make ``mamba_ssm`` (and ``causal_conv1d``) importable from their unpacked sources, on the built extensions
    (or on ``scan_ext`` / ``conv_ext`` given: the CPU tests pass stand-ins): a bare ``mamba_ssm`` package pointing
    at the source folder, so that ``mamba_ssm.ops.selective_scan_interface`` imports alone; ``mamba_ssm.utils.
    generation`` and ``.hf`` (text generation and Hugging Face loading, which import transformers) replaced by
    empty stand-ins, since training never calls them. Returns the versions."""
    sys.modules["selective_scan_cuda"] = scan_ext if scan_ext is not None else build_selective_scan(mamba_src,
                                                                                                    build_dir)
    if conv_src is not None:
        sys.modules["causal_conv1d_cuda"] = (conv_ext if conv_ext is not None
                                             else build_causal_conv1d(conv_src, build_dir))
        sys.path.insert(0, str(conv_src))
    pkg = types.ModuleType("mamba_ssm")
    pkg.__path__ = [str(mamba_src / "mamba_ssm")]
    sys.modules["mamba_ssm"] = pkg
    utils = types.ModuleType("mamba_ssm.utils")
    utils.__path__ = [str(mamba_src / "mamba_ssm" / "utils")]
    sys.modules["mamba_ssm.utils"] = utils
    gen = types.ModuleType("mamba_ssm.utils.generation")
    gen.GenerationMixin = type("GenerationMixin", (), {})
    hf = types.ModuleType("mamba_ssm.utils.hf")

    def _unused(*args, **kwargs):
        raise NotImplementedError("not part of a training step")

    hf.load_config_hf = hf.load_state_dict_hf = _unused
    sys.modules["mamba_ssm.utils.generation"], sys.modules["mamba_ssm.utils.hf"] = gen, hf
    return {"mamba_ssm": package_version(mamba_src),
            "causal_conv1d": package_version(conv_src) if conv_src is not None else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mamba-ssm-src", type=Path, required=True)
    ap.add_argument("--causal-conv1d-src", type=Path)
    ap.add_argument("--build-dir", type=Path, required=True)
    ap.add_argument("--only", choices=["mamba_ssm", "causal_conv1d"], help="build one of the two")
    args = ap.parse_args()
    if args.only != "causal_conv1d":
        build_selective_scan(unpacked(args.mamba_ssm_src, args.build_dir / "src"), args.build_dir)
    if args.causal_conv1d_src and args.only != "mamba_ssm":
        build_causal_conv1d(unpacked(args.causal_conv1d_src, args.build_dir / "src"), args.build_dir)


if __name__ == "__main__":
    main()
