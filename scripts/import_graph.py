"""The project's import graph, from the source (``ast``), checked against its layers.

    python scripts/import_graph.py            # package graph; exit 1 on a violation
    python scripts/import_graph.py --edges    # and every module-to-module edge
    python scripts/import_graph.py --lazy     # and every import of another library inside a function

Layers, lowest first: sobolev < records < analysis < pipeline < notebooks. A module may import
its own package and the packages below it. Violations: an import of a higher layer (at module
level or inside a function), a cycle of module-level imports, and a project import inside a
function (which hides a cycle or an upward edge from a reader). Imports under ``if
TYPE_CHECKING:`` are annotations only: they are listed, not run, so no cycle counts them.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

LAYERS = ("sobolev", "records", "analysis", "pipeline", "notebooks")
ROOT = Path(__file__).resolve().parents[1]


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every package of ``LAYERS`` (notebooks: their py:percent twins)."""
    found = {}
    for layer in LAYERS:
        for path in sorted((root / layer).glob("*.py")):
            name = layer if path.stem == "__init__" else f"{layer}.{path.stem}"
            found[name] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(module: str, path: Path, known: dict[str, Path]):
    """``(target, where, line)`` for each import in ``module``; ``where`` is ``module``, ``function``
    or ``typing``; ``target`` is a project module, or a top-level library name."""
    package = module if path.stem == "__init__" else module.rpartition(".")[0]

    def visit(node, where):
        for child in ast.iter_child_nodes(node):
            inner = where
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                inner = "function"
            elif isinstance(child, ast.If) and _type_checking(child) and where == "module":
                inner = "typing"
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield _resolve(alias.name, None, known), inner, child.lineno
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in child.names:
                    yield _resolve(base, alias.name, known), inner, child.lineno
            yield from visit(child, inner)

    return list(visit(ast.parse(path.read_text(), str(path)), "module"))


def _resolve(base: str, name: str | None, known: dict[str, Path]) -> str:
    if name and f"{base}.{name}" in known:  # ``from package import submodule``
        return f"{base}.{name}"
    while base and base not in known and "." in base:
        base = base.rpartition(".")[0]
    return base if base in known else base.split(".")[0]


def layer(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in LAYERS else None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected set of modules (iterative DFS, Tarjan's order)."""
    found, done = [], set()
    for start in sorted(edges):
        stack, path, on_path = [(start, iter(sorted(edges.get(start, ()))))], [start], {start}
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif child in on_path:
                cycle = path[path.index(child):] + [child]
                if not any(set(cycle) == set(c) for c in found):
                    found.append(cycle)
            elif child not in done:
                stack.append((child, iter(sorted(edges.get(child, ())))))
                path.append(child)
                on_path.add(child)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edges", action="store_true", help="list every module-to-module edge")
    ap.add_argument("--lazy", action="store_true", help="list the imports of other libraries inside functions")
    ap.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this script's)")
    args = ap.parse_args(argv)
    known = modules(args.root)
    problems, runtime, packages, lazy = [], {}, {}, {}
    for module, path in known.items():
        for target, where, line in imports(module, path, known):
            site = f"{path.relative_to(args.root)}:{line}"
            if target not in known:
                if where == "function":
                    lazy.setdefault(site, target)
                continue
            if target == module or target in runtime.get((module, where), ()):
                continue  # one edge per pair of modules and kind of import
            runtime.setdefault((module, where), set()).add(target)
            if args.edges:
                print(f"{module} -> {target} ({where}, {site})")
            src, dst = layer(module), layer(target)
            packages.setdefault((src, dst), {}).setdefault(where, 0)
            packages[(src, dst)][where] += 1
            if LAYERS.index(dst) > LAYERS.index(src):
                problems.append(f"upward: {module} -> {target} ({site}; {src} is below {dst})")
            if where == "function":
                problems.append(f"inside a function: {module} -> {target} ({site}); import at module level")
    module_level, run = {}, {}
    for (module, where), targets in runtime.items():
        if where != "typing":
            run.setdefault(module, set()).update(targets)
        if where == "module":
            module_level.setdefault(module, set()).update(targets)
    found = cycles(module_level)
    problems += [f"cycle: {' -> '.join(c)}" for c in found]
    problems += [f"cycle through imports inside functions: {' -> '.join(c)}" for c in cycles(run)
                 if not any(set(c) == set(f) for f in found)]
    print(f"package graph ({' < '.join(LAYERS)}; edges: module-to-module imports):")
    for (src, dst), counts in sorted(packages.items(), key=lambda kv: (-LAYERS.index(kv[0][0]), kv[0][1])):
        print(f"  {src:9s} -> {dst:9s} " + ", ".join(f"{n} {where}" for where, n in sorted(counts.items())))
    if args.lazy:
        print(f"imports of other libraries inside functions ({len(lazy)}):")
        print("\n".join(f"  {site}: {target}" for site, target in lazy.items()))
    for p in problems:
        print(f"VIOLATION {p}", file=sys.stderr)
    print(f"{len(known)} modules; {'no violation' if not problems else f'{len(problems)} violation(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
