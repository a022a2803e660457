"""Every third-party module that run-time code imports is a declared base dependency.

A performer installs liveart without extras (the README's first command does exactly that), so a
module imported anywhere outside ``liveart/training/`` must come from ``[project] dependencies``
in pyproject.toml. The one exception is an import guarded by ``except ImportError`` (the feature then
says in one line which extra to install); such a module must still be declared, in some extra.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "liveart"

# Import names of distributions that may not be installed here (a platform marker picks another
# one), so that importlib.metadata cannot tell what they provide.
KNOWN_IMPORT_NAMES = {
    "onnxruntime": {"onnxruntime"},
    "onnxruntime-gpu": {"onnxruntime"},
    "tomli": {"tomli"},
    "jack-client": {"jack"},
    "python-rtmidi": {"rtmidi"},
    "pillow": {"PIL"},
}
IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


def _normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    """Distribution names of PEP 508 requirement strings, normalised."""
    names = set()
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, f"cannot read the requirement {requirement!r}"
        names.add(_normalise(match.group(1)))
    return names


def import_names(distributions: set[str]) -> set[str]:
    """The top-level modules that these distributions provide."""
    provided: set[str] = set()
    for module, owners in importlib.metadata.packages_distributions().items():
        if distributions & {_normalise(owner) for owner in owners}:
            provided.add(module)
    for distribution in distributions:
        provided |= KNOWN_IMPORT_NAMES.get(distribution, set())
    return provided


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether an import sits in the body of a ``try`` that catches ImportError."""
    child, parent = node, parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.Try) and child in parent.body:
            for handler in parent.handlers:
                caught = handler.type
                names = ({e.id for e in caught.elts if isinstance(e, ast.Name)} if isinstance(caught, ast.Tuple)
                         else {caught.id} if isinstance(caught, ast.Name) else set())
                if names & IMPORT_ERRORS:
                    return True
        child, parent = parent, parents.get(parent)
    return False


def third_party_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level module, line, guarded) for each absolute import of a non-stdlib, non-liveart module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in ("__future__", "liveart"):
                continue
            found.append((top, node.lineno, _guarded(node, parents)))
    return found


def undeclared_imports(package: Path, pyproject: Path) -> list[str]:
    """One line per import in run-time code that the base dependencies (or, when guarded, any
    extra) do not provide."""
    project = tomllib.loads(pyproject.read_text())["project"]
    base = import_names(requirement_names(project["dependencies"]))
    extras = import_names(requirement_names(
        [r for reqs in project.get("optional-dependencies", {}).values() for r in reqs]))
    problems = []
    for path in sorted(package.rglob("*.py")):
        if package / "training" in path.parents:
            continue
        for module, line, guarded in third_party_imports(path):
            if module in base or (guarded and module in extras):
                continue
            where = f"{path.relative_to(package.parent)}:{line}"
            problems.append(f"{where} imports {module}, which "
                            + ("no extra declares" if guarded else "no base dependency provides"))
    return problems


def test_run_time_imports_are_base_dependencies():
    assert undeclared_imports(PACKAGE, REPO / "pyproject.toml") == []


def _without_dependency(tmp_path: Path, distribution: str) -> Path:
    text = (REPO / "pyproject.toml").read_text()
    lines = [line for line in text.splitlines()
             if not re.match(rf'\s*"{re.escape(distribution)}\s*[><=~;"]', line, re.IGNORECASE)]
    assert len(lines) == len(text.splitlines()) - 1, f"{distribution} is not one line of pyproject.toml"
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("\n".join(lines))
    return pyproject


@pytest.mark.parametrize("distribution, module", [("pillow", "PIL"), ("mido", "mido"), ("numba", "numba")])
def test_a_removed_base_dependency_is_found(tmp_path, distribution, module):
    problems = undeclared_imports(PACKAGE, _without_dependency(tmp_path, distribution))
    assert problems and all(f"imports {module}," in p for p in problems), problems


def test_guarded_import_needs_an_extra_and_unguarded_needs_a_base_dependency(tmp_path):
    package = tmp_path / "liveart"
    (package / "training").mkdir(parents=True)
    (package / "training" / "fit.py").write_text("import torch\n")  # training code may use any extra
    (package / "plot.py").write_text(
        "def draw():\n"
        "    try:\n"
        "        import matplotlib\n"
        "    except ImportError:\n"
        "        raise RuntimeError('pip install liveart[plot]')\n")
    (package / "video.py").write_text("def frames():\n    from PIL import Image\n")
    (package / "odd.py").write_text("try:\n    import yaml\nexcept (ValueError, ModuleNotFoundError):\n    pass\n")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["numpy"]\n'
                         '[project.optional-dependencies]\nplot = ["matplotlib"]\ntrain = ["torch==2.13.0", "pillow"]\n')
    assert undeclared_imports(package, pyproject) == [
        "liveart/odd.py:2 imports yaml, which no extra declares",
        "liveart/video.py:2 imports PIL, which no base dependency provides",
    ]
