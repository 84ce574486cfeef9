"""Inductor's GEMM autotuning timings carried from one GPU call to the next.

With ``max_autotune_gemm`` (compare.py's ``autotune`` and ``autotune_gemm`` variants), inductor times every
candidate kernel of every matrix product before it compiles the model: for ARM-B pretraining on an H100 that took
368 s for the first 29 of the step's products (2026-12-07), longer than one device call can give a variant. Inductor
keeps those timings in one JSON file per system (card, CUDA, Triton), ``<cache dir>/cache/<system hash>``
(``torch._inductor.codecache.PersistentCache``), written after each product, and a later compile on the same system
reads them instead of timing again. So compare.py

- before its runs, merges each ``inductor_autotune-<system hash>.json`` of ``--autotune-seed`` (default
  benchmarks/autotune/, committed with the repository) into that file (:func:`seed`), and
- after each model-only variant and at the end, writes the file back to its output folder under that name
  (:func:`export`), also when the variant was stopped part way: the products timed so far are in it.

Copy the exported files into benchmarks/autotune/ and the next call's autotuned compile starts where this one
stopped. A timing from another system (another card, CUDA or Triton) has another hash and is never read.

The same for inductor's coordinate-descent tuning of its own kernels (``coordinate_descent_tuning``, compare.py's
``cdt``): each tuned kernel's best launch config lands in a ``.best_config`` file beside the kernel's source in the
inductor cache dir (``torch._inductor.runtime.autotune_cache.AutotuneCache``; the name hashes the kernel's source,
the torch version and its candidate configs), so a compile that finds the file skips the tuning. ARM-B pretraining
under ``cdt`` was still tuning after 240 s on an H100 (2026-12-07). :func:`export_coordesc` writes the configs found
by coordinate descent as one ``inductor_coordesc.json`` (paths relative to the cache dir), :func:`seed_coordesc` puts
them back; an entry for another torch version or another kernel source has another name and is never read.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

PREFIX = "inductor_autotune-"
_KEY = re.compile(r"[A-Za-z0-9_.-]+")


def local_cache_folder() -> Path:
    """``<inductor cache dir>/cache``: where ``PersistentCache`` keeps one timings file per system (the cache dir is
    ``TORCHINDUCTOR_CACHE_DIR`` or torch's default; calling this sets the variable, so subprocesses share it)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / "cache"


def _timings(path: Path) -> dict | None:
    """The file's ``{"system": ..., "cache": {...}}``, or None when it is not such a file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("cache"), dict) else None


def _merge(into: dict, new: dict) -> dict:
    """``new``'s entries added to ``into`` (nested dicts merged; a timing ``into`` already has is kept)."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        elif k not in into:
            into[k] = v
    return into


def count(cache: dict) -> int:
    """Timed products in a cache: (op, inputs) pairs."""
    return sum(len(by_inputs) for by_inputs in cache.values() if isinstance(by_inputs, dict))


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def seed(src: Path, folder: Path) -> dict[str, int]:
    """Merge ``src``'s ``inductor_autotune-<hash>.json`` files into ``folder``'s timings files; the products each
    holds afterwards, by system hash. A file that is not a timings file is passed over with a message."""
    held = {}
    for f in sorted(Path(src).glob(PREFIX + "*.json")) if Path(src).is_dir() else []:
        key = f.name[len(PREFIX):-len(".json")]
        data = _timings(f)
        if not _KEY.fullmatch(key) or data is None:
            print(f"autotune seed: {f} is not an inductor timings file; passed over", flush=True)
            continue
        target = Path(folder) / key
        cur = _timings(target) or {"system": data.get("system"), "cache": {}}
        _merge(cur["cache"], data["cache"])
        _write(target, cur)
        held[key] = count(cur["cache"])
    return held


def export(folder: Path, out: Path, known: dict[str, int] | None = None) -> dict[str, int]:
    """Write each of ``folder``'s timings files to ``out`` as ``inductor_autotune-<hash>.json``, except those that
    hold no more products than ``known`` says (what was seeded: nothing new to bring back); the products in each
    file written, by system hash."""
    done, known = {}, known or {}
    for f in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        data = _timings(f) if f.is_file() and _KEY.fullmatch(f.name) and not f.name.endswith(".tmp") else None
        if data is not None and count(data["cache"]) > known.get(f.name, 0):
            _write(Path(out) / f"{PREFIX}{f.name}.json", data)
            done[f.name] = count(data["cache"])
    return done


COORDESC = "inductor_coordesc.json"
_BEST = re.compile(r"(?:[A-Za-z0-9_-]+/){1,2}[A-Za-z0-9_-]+\.best_config")


def _best_configs(root: Path) -> dict[str, dict]:
    """The cache dir's ``.best_config`` files found by coordinate descent, by path relative to ``root``."""
    found = {}
    for f in sorted(Path(root).glob("**/*.best_config")) if Path(root).is_dir() else []:
        rel = f.relative_to(root).as_posix()
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if _BEST.fullmatch(rel) and isinstance(data, dict) and data.get("found_by_coordesc"):
            found[rel] = data
    return found


def seed_coordesc(src: Path, root: Path) -> int:
    """Write the entries of ``src``'s ``inductor_coordesc.json`` under ``root`` (the inductor cache dir) where no file
    is yet; the entries now in place. A damaged file or entry is passed over with a message."""
    f = Path(src) / COORDESC
    if not f.is_file():
        return 0
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict):
        print(f"autotune seed: {f} is not a file of coordinate-descent configs; passed over", flush=True)
        return 0
    held = 0
    for rel, cfg in data.items():
        if not (isinstance(rel, str) and _BEST.fullmatch(rel) and isinstance(cfg, dict)):
            print(f"autotune seed: {f}: entry {rel!r} passed over", flush=True)
            continue
        target = Path(root) / rel
        if not target.exists():
            _write(target, cfg)
        held += 1
    return held


def export_coordesc(root: Path, out: Path, known: int = 0) -> int:
    """Write the cache dir's coordinate-descent configs to ``out``/inductor_coordesc.json when there are more than
    ``known`` (what was seeded); how many were written, or 0."""
    found = _best_configs(root)
    if len(found) <= known:
        return 0
    _write(Path(out) / COORDESC, found)
    return len(found)
