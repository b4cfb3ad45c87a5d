"""Imports go down only: every import in every module under qfid/ (module level or inside a
function, absolute or relative) against the layer map in qfid/__init__.py's docstring.

EXCEPTIONS lists, file by file, the imports the map forbids that the code still makes, each
with its reason. The list is exact: a forbidden import not on it fails, and so does an entry
that no longer occurs. layering_fixture.py proves the checker catches a forbidden import.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import qfid

ROOT = Path(qfid.__file__).parent
FIXTURE = Path(__file__).with_name("layering_fixture.py")
EXCEPTIONS: dict[tuple[str, str], str] = {}
_LAYER_LINE = re.compile(r"^    ([a-z_]+(?:, [a-z_]+)*): ")


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    importer: str
    imported: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.importer} imports {self.imported}"


def layer_ranks() -> dict[str, int]:
    """Unit -> rank (0 at the bottom) from the map in qfid/__init__.py's docstring."""
    doc = ast.get_docstring(ast.parse((ROOT / "__init__.py").read_text(encoding="utf-8")))
    block = doc.split("Layering:", 1)[1]
    layers = [m.group(1).split(", ") for line in block.splitlines() if (m := _LAYER_LINE.match(line))]
    assert layers, "qfid/__init__.py's docstring holds no layer map"
    return {unit: rank for rank, units in enumerate(reversed(layers)) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """`qfid` (the facade) or the package / top-level module right under it."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, qfid module) for every import in the file, wherever it sits; `from qfid import
    __version__` is left out (the facade imports nothing at module level)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base == "qfid":
                found += [(node.lineno, _from_facade(alias.name)) for alias in node.names if alias.name != "__version__"]
            else:
                found.append((node.lineno, base))
    return [(line, name) for line, name in found if name == "qfid" or name.startswith("qfid.")]


def _from_facade(name: str) -> str:
    """`from qfid import evals` names a package; `from qfid import load` the facade."""
    return f"qfid.{name}" if (ROOT / name).is_dir() or (ROOT / f"{name}.py").is_file() else "qfid"


def violations(path: Path, module: str, ranks: dict[str, int]) -> list[Violation]:
    importer = unit_of(module)
    file = path.relative_to(ROOT.parent).as_posix() if path.is_relative_to(ROOT) else path.name
    return [Violation(file, line, importer, unit_of(target)) for line, target in imported_modules(path, module)
            if unit_of(target) != importer and ranks.get(unit_of(target), len(ranks)) >= ranks.get(importer, -1)]


def qfid_modules() -> list[tuple[Path, str]]:
    return [(path, module_name(path)) for path in sorted(ROOT.rglob("*.py"))]


def test_every_package_is_in_the_map():
    ranks = layer_ranks()
    units = {unit_of(module) for _, module in qfid_modules()}
    assert units - set(ranks) == set(), "place these in the layer map in qfid/__init__.py"


def test_imports_go_down_only_except_the_listed_exceptions():
    ranks = layer_ranks()
    found = [v for path, module in qfid_modules() for v in violations(path, module, ranks)]
    unlisted = [str(v) for v in found if (v.file, v.imported) not in EXCEPTIONS]
    stale = sorted(set(EXCEPTIONS) - {(v.file, v.imported) for v in found})
    assert unlisted == [], "imports against the layering (qfid/__init__.py); move the code or the import"
    assert stale == [], "listed exceptions that no longer occur: drop them from EXCEPTIONS"


def test_the_checker_catches_a_forbidden_import_inside_a_function():
    found = violations(FIXTURE, "qfid.models.layering_fixture", layer_ranks())
    assert [(v.line, v.importer, v.imported) for v in found] == [(13, "models", "evals"), (19, "models", "engine")]


def test_the_map_orders_the_layers_as_the_design_does():
    ranks = layer_ranks()
    order = ["errors", "paths", "utils", "config", "models", "kernels", "quant", "engine", "evals", "demo", "cli", "qfid", "testing"]
    assert [ranks[u] for u in order] == sorted(ranks[u] for u in order) and len({ranks[u] for u in order}) == len(order)
    assert ranks["models"] == ranks["layouts"] and ranks["quant"] == ranks["layers"]
