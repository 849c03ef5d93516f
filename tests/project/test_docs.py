"""The documentation holds together: the README stays a short front page whose links to docs/
pages (and theirs to each other) resolve, docs/fleet.md's settings table is exactly `Settings`,
and every `selectit.…` module path named in the docs or in a docstring exists.

Each check reads the files as they are; none imports the modules it checks (their names are
resolved against the source tree, with `ast` for the names a module defines).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
from conftest import ROOT

from selectit.settings import Settings, variable

README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 300

#: Where each installed package name lives in the checkout (pyproject's `package-dir`).
PACKAGES = {"selectit": ROOT / "selectit", "selectit.workers": ROOT / "workers",
            "selectit.migrations": ROOT / "migrations", "selectit._alembic": ROOT / "alembic"}


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


# -- the README ---------------------------------------------------------------------------------

def readme_lines(text: str) -> int:
    return len(text.splitlines())


def test_the_readme_is_under_300_lines() -> None:
    n = readme_lines(README.read_text(encoding="utf-8"))
    assert n < MAX_README_LINES, f"README.md has {n} lines; move the details to a docs/ page (under {MAX_README_LINES})"


# -- links ----------------------------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces → hyphens.

    >>> github_slug("Scoring engines: torch or vLLM")
    'scoring-engines-torch-or-vllm'
    """
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {github_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file, or whose #anchor in a Markdown file, does not exist."""
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # http(s):, mailto:
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    return broken


def readme_doc_links(text: str) -> set[str]:
    """The docs/ pages the README links to."""
    return {t.partition("#")[0] for t in LINK.findall(text) if t.startswith("docs/") and t.partition("#")[0] != "docs/"}


def test_every_docs_page_the_readme_links_exists() -> None:
    links = readme_doc_links(README.read_text(encoding="utf-8"))
    assert links, "README.md links to no docs/ page"
    missing = sorted(link for link in links if not (ROOT / link).is_file())
    assert not missing, f"README.md links to docs pages that do not exist: {missing}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = readme_doc_links(README.read_text(encoding="utf-8"))
    orphans = sorted(f"docs/{p.name}" for p in DOCS.glob("*.md") if f"docs/{p.name}" not in linked)
    assert not orphans, f"docs pages the README's Documentation table does not list: {orphans}"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    assert not broken_links(page), f"{page.relative_to(ROOT)}: broken links {broken_links(page)}"


# -- the settings table --------------------------------------------------------------------------

def settings_table(text: str) -> dict[str, tuple[str, str]]:
    """variable → (field, default) of the table in the `## Settings` section of docs/fleet.md."""
    match = re.search(r"^## Settings\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "docs/fleet.md has no `## Settings` section"
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| ([^|]+?) \|", match.group(1), re.M)
    return {var: (field, default.strip().strip("`")) for var, field, default in rows}


def _same_default(written: str, value: object) -> bool:
    if isinstance(value, (int, float)):
        try:
            return float(written) == float(value)
        except ValueError:
            return False
    return written == str(value)


def settings_problems(table: dict[str, tuple[str, str]]) -> list[str]:
    problems = []
    fields = {variable(f.name): f for f in dataclasses.fields(Settings)}
    for var in sorted(fields.keys() - table.keys()):
        problems.append(f"{var} ({fields[var].name}) is missing")
    for var in sorted(table.keys() - fields.keys()):
        problems.append(f"{var} is not a field of Settings")
    for var in sorted(fields.keys() & table.keys()):
        field, default = table[var]
        if field != fields[var].name:
            problems.append(f"{var} is the field {fields[var].name}, not {field}")
        if not _same_default(default, fields[var].default):
            problems.append(f"{var}: the default is {fields[var].default!r}, not {default!r}")
    return problems


def test_the_fleet_settings_table_lists_exactly_the_fields_of_settings() -> None:
    table = settings_table((DOCS / "fleet.md").read_text(encoding="utf-8"))
    problems = settings_problems(table)
    assert not problems, "docs/fleet.md, ## Settings: " + "; ".join(problems)


# -- module paths ----------------------------------------------------------------------------------

#: `selectit.a.b` not inside a path, a URL, a file name in quotes or a `$VARIABLE`.
DOTTED = re.compile(r"(?<![\w./:$'\"-])selectit(?:\.[A-Za-z_]\w*)+")


def _module_file(dotted: str) -> Path | None:
    """The source file of the module `dotted` (a package's __init__.py), or None."""
    for prefix, base in sorted(PACKAGES.items(), key=lambda kv: -len(kv[0])):
        if dotted == prefix or dotted.startswith(prefix + "."):
            path = base.joinpath(*dotted[len(prefix) + 1:].split(".")) if dotted != prefix else base
            if path.with_suffix(".py").is_file() and dotted != prefix:
                return path.with_suffix(".py")
            if (path / "__init__.py").is_file():
                return path / "__init__.py"
            if path.is_dir():
                return path  # a directory installed as a package without an __init__.py (alembic/)
            return None
    return None


def _defined(body: list[ast.stmt]) -> dict[str, ast.AST]:
    """The names a module or class body defines (functions, classes, assignments, imports)."""
    names: dict[str, ast.AST] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for n in ast.walk(target):
                    if isinstance(n, ast.Name):
                        names[n.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
        elif isinstance(node, (ast.If, ast.Try)):
            names.update(_defined([*node.body, *node.orelse]))
    if "__getattr__" in names and isinstance(names.get("__all__"), ast.Assign):  # lazy names: `__all__`
        value = names["__all__"].value
        if isinstance(value, (ast.List, ast.Tuple)):
            names.update({e.value: value for e in value.elts if isinstance(e, ast.Constant)})
    return names


def _not_modules() -> set[str]:
    """Dotted names that are not modules: the Celery tasks' names (`selectit.plan`, …) and the
    engines' entry-point group (`selectit.engines`)."""
    app = (ROOT / "workers" / "app.py").read_text(encoding="utf-8")
    engines = (ROOT / "selectit" / "scoring" / "engines.py").read_text(encoding="utf-8")
    return set(re.findall(r"\"(selectit\.\w+)\"", app)) | set(re.findall(r"^ENTRY_POINT_GROUP = \"(.+)\"$", engines, re.M))


def path_exists(dotted: str) -> bool:
    """`selectit.x.y[.Name[.attr]]` names a module, or a name a module defines (and, for a class,
    one of its attributes)."""
    if dotted in _not_modules():
        return True
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        source = _module_file(".".join(parts[:cut]))
        if source is None:
            continue
        rest = parts[cut:]
        if source.is_dir():
            return not rest
        body = ast.parse(source.read_text(encoding="utf-8")).body
        for name in rest:
            node = _defined(body).get(name)
            if node is None:
                return False
            if not isinstance(node, ast.ClassDef):
                return True  # an attribute of a function or a value: not followed further
            body = node.body
        return True
    return False


def named_paths() -> dict[str, set[str]]:
    """Every dotted `selectit.…` name → where it is named: the README, docs/, and every docstring
    of the package and the Celery app."""
    found: dict[str, set[str]] = {}

    def add(text: str, where: str) -> None:
        for name in DOTTED.findall(text):
            found.setdefault(name, set()).add(where)

    for page in _pages():
        add(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))
    for path in [*(ROOT / "selectit").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    add(doc, f"{path.relative_to(ROOT)} ({getattr(node, 'name', 'module')})")
    return found


def test_every_selectit_module_path_named_in_the_docs_and_docstrings_exists() -> None:
    found = named_paths()
    assert "selectit.api" in found and "selectit.settings" in found  # the scan sees what it should
    missing = {name: sorted(where) for name, where in sorted(found.items()) if not path_exists(name)}
    assert not missing, f"names of modules that do not exist: {missing}"


def test_the_module_path_check_tells_real_from_stale() -> None:
    assert path_exists("selectit.scoring.openai_engine.OpenAIScorer")
    assert path_exists("selectit.workers.app") and path_exists("selectit.Store")
    assert path_exists("selectit.settings.Settings.from_env")
    assert not path_exists("selectit.scorer")
    assert not path_exists("selectit.scoring.no_such_module")
    assert not path_exists("selectit.settings.NoSuchName")
    assert DOTTED.findall("`sqlite:///selectit.db`, ./selectit.db, `selectit.jobs.runner`") == ["selectit.jobs.runner"]


# -- docs/python-api.md runs ------------------------------------------------------------------------

def test_the_python_api_page_runs_as_written(tmp_path: Path, monkeypatch) -> None:
    """The examples of docs/python-api.md after its first block (the README's notebook, run by
    tests/front/test_api.py), in order, with the tiny random Llama in place of SmolLM2."""
    import json

    from tiny_model import build_tiny_model

    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "python-api.md").read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 4, "docs/python-api.md lost its examples"
    code = "\n".join(blocks[1:])
    assert '"smollm2-135m"' in code and "progress=True" in code and ".selection(" in code
    code = code.replace('"smollm2-135m"', json.dumps(str(build_tiny_model(tmp_path / "model"))))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/python-api.md", "exec"), namespace)  # noqa: S102 - our own docs
    assert (namespace["result"].read, namespace["result"].new, namespace["result"].duplicates) == (2, 2, 0)
    assert namespace["summary"].scored == 10 and namespace["summary"].failed == 0
    assert namespace["info"].n_selected == 1 and list(namespace["top"]["rank"]) == [1]
