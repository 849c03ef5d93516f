"""The package's layering: each wing imports only the wings its docstring allows, the CLI reaches
the library through `selectit.Store` only, and no module imports torch at import time.

Read from the source with `ast` (every `import` and `from … import`, at any depth, counts).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "selectit"
BASE = {"errors", "contract", "settings", "formulas", "ranking", "timing", "data", "__init__", "__version__"}
#: The front: the door (`api`), the CLI and the status composed over two wings. They import the
#: wings; no wing imports them.
FRONT = {"api", "results", "cli", "status", "__main__"}
#: wing → the wings it may import (the base modules are open to all)
ALLOWED = {
    "store": set(),
    "scoring": {"store"},
    "jobs": {"store", "scoring"},
    "fusion": {"store"},
    "io": {"store", "fusion"},
    "report": {"store", "fusion", "io"},
}


def _selectit_imports(path: Path) -> set[str]:
    """The selectit modules `path` imports, as dotted names under `selectit.`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= _selectit_imports_of(node)
    return found


def _selectit_imports_of(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The selectit modules one import statement names."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.startswith("selectit.")}
    if not node.module or node.level != 0:
        return set()
    if node.module == "selectit":
        return {f"selectit.{a.name}" for a in node.names}
    return {node.module} if node.module.startswith("selectit.") else set()


def _wing(dotted: str) -> str:
    return dotted.split(".")[1]


@pytest.mark.parametrize("wing", sorted(ALLOWED))
def test_a_wing_imports_only_what_its_docstring_allows(wing: str) -> None:
    doc = ast.get_docstring(ast.parse((PACKAGE / wing / "__init__.py").read_text()))
    assert doc and "May import" in doc, f"selectit/{wing}/__init__.py must say what the wing may import"
    for path in sorted((PACKAGE / wing).glob("*.py")):
        for dotted in _selectit_imports(path):
            other = _wing(dotted)
            assert other not in FRONT, f"{path.relative_to(ROOT)} imports {dotted}: a wing never imports the front"
            if other == wing or other in BASE or other == "workers":
                assert other != "workers", f"{path.relative_to(ROOT)} imports the Celery app ({dotted})"
                continue
            assert other in ALLOWED[wing], (f"{path.relative_to(ROOT)} imports {dotted}: the {wing} wing may "
                                            f"import only {sorted(ALLOWED[wing]) or 'the base modules'}")


@pytest.mark.parametrize("path", sorted((PACKAGE / "cli").glob("*.py")), ids=lambda p: p.name)
def test_the_cli_reaches_the_library_through_the_front_door_only(path: Path) -> None:
    """The CLI parses and prints: it imports `selectit.api` (the Store and the few functions beside
    it), itself and the base modules — no wing, no driver, no ORM."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    forbidden = {m for m in modules if m.split(".")[0] in ("sqlalchemy", "duckdb", "torch", "transformers")}
    around = {d for d in _selectit_imports(path) if _wing(d) not in BASE | {"api", "cli", "Ranking"}}
    assert not forbidden | around, (f"selectit/cli/{path.name} imports {sorted(forbidden | around)}: "
                                    f"call a selectit.Store method (or a function of selectit.api) instead")


def test_no_module_of_the_package_is_over_600_lines() -> None:
    """Modules stay small enough to read: one job each, split when they grow past the bound."""
    long = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
            if len(p.read_text(encoding="utf-8").splitlines()) > 600}
    assert not long, f"over 600 lines: {sorted(long)}"


def test_every_module_is_in_a_wing_the_base_or_the_front() -> None:
    """A new top-level module must be placed: its layer decides what it may import."""
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").exists())}
    assert names <= BASE | FRONT | set(ALLOWED) | {"workers"}, sorted(names - BASE - FRONT - set(ALLOWED))


def test_the_base_modules_import_no_wing() -> None:
    for name in ("errors", "contract", "settings", "formulas", "ranking"):
        wings = {_wing(d) for d in _selectit_imports(PACKAGE / f"{name}.py")} & set(ALLOWED)
        assert not wings, f"selectit/{name}.py imports the wings {sorted(wings)}"


def _environment_writes(path: Path) -> list[int]:
    """Lines of `path` that write `os.environ` (an item set or deleted, update, pop, setdefault, putenv)."""
    def is_environ(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name) \
            and node.value.id == "os"

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)) and is_environ(node.value):
            found.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                (is_environ(node.func.value) and node.func.attr in ("update", "pop", "setdefault", "clear"))
                or (isinstance(node.func.value, ast.Name) and node.func.value.id == "os"
                    and node.func.attr in ("putenv", "unsetenv"))):
            found.append(node.lineno)
    return found


def test_settings_travel_as_values_not_through_the_environment() -> None:
    """The environment is read at the edge and passed on as values: no module writes it for
    another to read (the Hugging Face libraries' offline switches are theirs to read)."""
    allowed = {"io/hub.py"}  # HF_HUB_OFFLINE & co.: the only way to configure those libraries
    paths = [*PACKAGE.rglob("*.py"), *(ROOT / "workers").rglob("*.py")]
    writes = {str(p.relative_to(ROOT)): lines for p in paths if (lines := _environment_writes(p))}
    assert set(writes) <= {f"selectit/{a}" for a in allowed}, f"os.environ written at {writes}"


def _environment_reads(path: Path) -> list[int]:
    """Lines of `path` that read the process environment (`os.environ`, `os.getenv`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                and node.attr in ("environ", "getenv", "environb", "getenvb"):
            found.append(node.lineno)
    return found


def test_the_environment_is_read_in_the_settings_module_only() -> None:
    """Configuration is read once, at the edge, through `selectit.settings` (its `Settings.from_env`
    and `environment`); every other module gets values. The Hugging Face offline switches of
    `io/hub.py` are the one documented exception (they are those libraries' own configuration)."""
    allowed = {"selectit/settings.py", "selectit/io/hub.py"}
    paths = [*PACKAGE.rglob("*.py"), *(ROOT / "workers").rglob("*.py")]
    reads = {str(p.relative_to(ROOT)): lines for p in paths if (lines := _environment_reads(p))}
    assert set(reads) <= allowed, f"the environment read outside selectit/settings.py at {reads}"


def test_no_library_function_falls_back_to_the_environment() -> None:
    """`Settings.from_env()` and `EngineOptions.from_env()` run at the entry points only: the
    Store (the API's and the CLI's door) and the Celery app built by `celery -A`."""
    entry_points = {"selectit/api.py", "workers/app.py", "selectit/settings.py", "selectit/scoring/engines.py"}
    paths = [*PACKAGE.rglob("*.py"), *(ROOT / "workers").rglob("*.py")]
    calls = {str(p.relative_to(ROOT)) for p in paths if "from_env()" in p.read_text(encoding="utf-8")}
    assert calls <= entry_points, sorted(calls - entry_points)


def _import_time_imports(path: Path) -> set[str]:
    """The selectit modules `path` imports when it is imported: module-level statements only (an
    import inside a function runs later, on use; one under `if TYPE_CHECKING:` never runs)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
        elif isinstance(node, (ast.If, ast.Try)):
            pending.extend([*node.body, *node.orelse, *getattr(node, "handlers", []), *getattr(node, "finalbody", [])])
        elif isinstance(node, ast.ExceptHandler):
            pending.extend(node.body)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= _selectit_imports_of(node)
    return found


def test_no_import_circle() -> None:
    """Module-level imports form no cycle: every module can be imported first, on its own."""
    modules = {".".join(("selectit", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}
    graph = {m: {i for i in _import_time_imports(p) if i in modules and i != m} for m, p in modules.items()}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            cycle = path[path.index(module):] + (module,)
            pytest.fail(f"import circle: {' → '.join(cycle)}")
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, path + (module,))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
