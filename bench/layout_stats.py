"""Layout figures of the service: modules in service/, the largest module (in lines and in
statements, which formatting does not change), the files that mention each task name (all, and
outside the task's own folder), and imports of the project's own modules inside functions.

    .venv/bin/python bench/layout_stats.py [--root CHECKOUT]

Compare two checkouts (e.g. before and after a reorganisation) by running it on each.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

OWN = ("service", "hypermodels")
TASK_NAMES = ("char_lm", "image_classification", "translation", "nmt")
FOLDER = {"nmt": "translation"}  # the translation task's old name


def _statements(tree: ast.AST) -> int:
    return sum(isinstance(node, ast.stmt) for node in ast.walk(tree))


def _own_imports_in_functions(tree: ast.AST) -> int:
    found = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] in OWN):
                    found.add(id(node))
                elif isinstance(node, ast.Import) and any(a.name.split(".")[0] in OWN for a in node.names):
                    found.add(id(node))
    return len(found)


def stats(root: Path) -> dict[str, object]:
    service = sorted((root / "service").rglob("*.py"))
    code = service + sorted((root / "hypermodels").rglob("*.py"))
    texts = {p: p.read_text(encoding="utf-8") for p in code}
    trees = {p: ast.parse(t) for p, t in texts.items()}
    modules = [p for p in service if texts[p].strip()]
    lines = {p: len(texts[p].splitlines()) for p in service}
    statements = {p: _statements(trees[p]) for p in service}
    by_lines, by_statements = max(lines, key=lines.__getitem__), max(statements, key=statements.__getitem__)
    mentions: dict[str, dict[str, int]] = {}
    for name in TASK_NAMES:
        files = [p for p in code if re.search(rf"\b{name}\b", texts[p])]
        own = root / "service" / "tasks" / FOLDER.get(name, name)
        mentions[name] = {"files": len(files), "outside_its_folder": sum(own not in p.parents for p in files)}
    return {
        "service_modules": len(modules),
        "largest_module_by_lines": f"{by_lines.relative_to(root)} ({lines[by_lines]} lines)",
        "largest_module_by_statements": f"{by_statements.relative_to(root)} ({statements[by_statements]} statements)",
        "files_mentioning_task_name": mentions,
        "own_imports_inside_functions": sum(_own_imports_in_functions(t) for t in trees.values()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="the checkout to measure")
    print(json.dumps(stats(Path(parser.parse_args().root)), indent=1))
