"""Every third-party module the code imports is declared in pyproject.toml.

The rule, for each ``import`` statement in src/, tests/, benchmarks/, experiments/ and tools/:

* standard-library modules (``sys.stdlib_module_names``) and the repository's own modules (armvision, and any
  module that is a .py file or a folder of these trees: test helpers, benchmark scripts) need nothing;
* every other top-level module must come from a distribution named in ``[project] dependencies`` or in one of
  ``[project.optional-dependencies]`` (the installed ``importlib.metadata.packages_distributions()`` maps the
  module to its distribution; a module no installed distribution provides fails too);
* except an import that is guarded: inside a ``try`` whose handlers catch ImportError (or ModuleNotFoundError,
  or Exception), or a module of ``OPTIONAL`` below: accelerator packages that are looked for before use
  (``armvision.ops`` checks for them; the tests that need them skip without them).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: the test extra installs tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
TREES = ("src", "tests", "benchmarks", "experiments", "tools")

# module -> why it need not be declared
OPTIONAL = {
    "triton": "armvision's GPU kernels; shipped with torch's CUDA builds, used only where ops finds it",
    "mamba_ssm": "the official CUDA kernels, an optional backend and the benchmarks' reference, built on a GPU",
    "causal_conv1d": "the official conv kernel, as mamba_ssm",
}
_GUARDS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions(pyproject: Path = ROOT / "pyproject.toml") -> set[str]:
    """Normalised names of every distribution pyproject.toml requires, in any extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return {_norm(re.match(r"\s*([A-Za-z0-9._-]+)", r).group(1)) for r in reqs}


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    child, p = node, parents.get(node)
    while p is not None:
        if isinstance(p, ast.Try) and child in p.body:
            for h in p.handlers:
                types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
                if h.type is None or any(isinstance(t, ast.Name) and t.id in _GUARDS for t in types):
                    return True
        child, p = p, parents.get(p)
    return False


def unguarded_imports(source: str) -> list[tuple[str, int]]:
    """(top-level module, line) of each absolute import in ``source`` that no ImportError handler guards."""
    tree = ast.parse(source)
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if not _guarded(node, parents):
            found += [(n.split(".")[0], node.lineno) for n in names]
    return found


def undeclared(files: list[Path], declared: set[str], local: set[str],
               dists: dict[str, list[str]]) -> list[str]:
    """'path:line: module' for each import that breaks the rule of the module docstring."""
    bad = []
    for f in files:
        for mod, line in unguarded_imports(f.read_text()):
            if mod in sys.stdlib_module_names or mod in local or mod in OPTIONAL or mod == "armvision":
                continue
            provided = {_norm(d) for d in dists.get(mod, [])}
            if not (provided | {_norm(mod)}) & declared:  # an uninstalled module counts by its own name
                where = ", ".join(sorted(provided)) or "no installed distribution"
                bad.append(f"{f.relative_to(ROOT) if f.is_relative_to(ROOT) else f}:{line}: {mod} ({where})")
    return bad


def _repo_files() -> tuple[list[Path], set[str]]:
    files = [f for t in TREES for f in sorted((ROOT / t).rglob("*.py"))]
    local = {f.stem for f in files} | {d.name for t in TREES for d in (ROOT / t).rglob("*") if d.is_dir()}
    return files, local


def test_every_import_is_declared():
    files, local = _repo_files()
    assert len(files) > 50, "the source trees were not found"
    bad = undeclared(files, declared_distributions(), local, md.packages_distributions())
    assert not bad, ("third-party imports that no [project] dependency or extra of pyproject.toml declares "
                     "(declare them, or guard the import):\n" + "\n".join(bad))


def test_rule_catches_an_undeclared_import(tmp_path):
    f = tmp_path / "mod.py"
    f.write_text("import os\nimport numpy\nimport scipy.stats\nfrom yaml import safe_load\n"
                 "try:\n    import guarded_thing\nexcept ImportError:\n    pass\n"
                 "def later():\n    import late_thing\n")
    dists = {"numpy": ["numpy"], "scipy": ["scipy"], "yaml": ["PyYAML"]}
    bad = undeclared([f], {"numpy", "pyyaml"}, set(), dists)
    assert [b.split(": ", 1)[1] for b in bad] == ["scipy (scipy)", "late_thing (no installed distribution)"]
    assert undeclared([f], {"numpy", "pyyaml", "scipy", "late-thing"}, set(), {**dists, "late_thing": ["late_thing"]}) == []


def test_declared_distributions_reads_every_extra(tmp_path):
    p = tmp_path / "pyproject.toml"
    p.write_text('[project]\ndependencies = ["torch>=2.4", "PyYAML>=6"]\n'
                 '[project.optional-dependencies]\ntest = ["pytest>=7", "tomli; python_version < \'3.11\'"]\n')
    assert declared_distributions(p) == {"torch", "pyyaml", "pytest", "tomli"}
