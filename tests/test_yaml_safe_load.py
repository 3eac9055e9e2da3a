"""YAML is only ever read with ``yaml.safe_load``: a YAML file may come from a user (the project
configuration, a trainer config), and the other loaders can build arbitrary Python objects.

Every Python file of the repository is parsed (ast, not grep: strings and comments do not count)
and each unsafe use is reported with its file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNSAFE_CALLS = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}
UNSAFE_LOADERS = {"Loader", "FullLoader", "UnsafeLoader", "CLoader", "CFullLoader", "CUnsafeLoader"}
SAFE_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def python_files(root: Path = REPO) -> list[Path]:
    """The repository's Python files, without hidden folders (virtual environments, caches)."""
    return sorted(
        p
        for p in root.rglob("*.py")
        if not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _yaml_attr(node: ast.AST) -> str | None:
    """``name`` for an ``yaml.name`` attribute, else None."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.attr if node.value.id == "yaml" else None
    return None


def _safe_loader(call: ast.Call) -> bool:
    """Whether a ``yaml.load`` call names a safe loader (``Loader=yaml.SafeLoader``)."""
    for kw in call.keywords:
        if kw.arg == "Loader":
            return (_yaml_attr(kw.value) or getattr(kw.value, "id", None)) in SAFE_LOADERS
    return False


def unsafe_yaml_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each unsafe YAML load or loader in a Python source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        name = _yaml_attr(node)
        if name in UNSAFE_LOADERS:
            found.append((node.lineno, f"yaml.{name}"))
        call = isinstance(node, ast.Call) and _yaml_attr(node.func) in UNSAFE_CALLS
        if call and not _safe_loader(node):
            found.append((node.lineno, f"yaml.{_yaml_attr(node.func)}("))
        if isinstance(node, ast.ImportFrom) and node.module == "yaml":
            bad = {a.name for a in node.names} & (UNSAFE_CALLS | UNSAFE_LOADERS)
            found.extend((node.lineno, f"from yaml import {b}") for b in sorted(bad))
    return sorted(found)


def test_every_python_file_reads_yaml_with_safe_load_only() -> None:
    files = python_files()
    assert len(files) > 50, f"only {len(files)} Python files found under {REPO}"
    problems = [
        f"{path.relative_to(REPO)}:{line}: {what}"
        for path in files
        for line, what in unsafe_yaml_uses(path.read_text())
    ]
    assert not problems, "use yaml.safe_load instead of:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source",
    [
        "import yaml\nyaml.load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.Loader)",
        "import yaml\nyaml.load(text, Loader=yaml.FullLoader)",
        "import yaml\nyaml.unsafe_load(text)",
        "import yaml\nyaml.full_load_all(text)",
        "from yaml import UnsafeLoader",
    ],
)
def test_each_unsafe_form_is_found_with_its_line(source: str) -> None:
    assert unsafe_yaml_uses(source) and unsafe_yaml_uses(source)[0][0] in (1, 2)


@pytest.mark.parametrize(
    "source",
    [
        "import yaml\nyaml.safe_load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
        "# yaml.load(text) in a comment\nx = 'yaml.unsafe_load'",
    ],
)
def test_safe_forms_and_mentions_in_text_pass(source: str) -> None:
    assert unsafe_yaml_uses(source) == []
