"""Measure the package's shape from its source (AST only, nothing imported): modules, import edges, levels,
cycles, imports that point up the intended layers, imports hidden in functions, importlib of our own
modules, and the longest modules and functions. `python tools/import_graph.py [PACKAGE_DIR]`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

# The intended layers, lowest first (docs/architecture.md, pyproject [tool.importlinter]); a module belongs to
# the layer of the longest prefix it matches.
LAYERS = (
    (
        "base",
        ("zoo._version", "zoo.keys", "zoo.errors", "zoo.io", "zoo.extras", "zoo.device", "zoo.paper", "zoo.paths"),
    ),
    ("nn", ("zoo.nn",)),
    ("core", ("zoo.models", "zoo.data", "zoo.graph", "zoo.accel", "zoo.lammps")),
    ("artifact", ("zoo.artifact", "zoo.spec", "zoo.forward", "zoo.convert")),
    ("registry", ("zoo.registry",)),
    ("services", ("zoo.train", "zoo.export", "zoo.hub")),
    ("use", ("zoo.use", "zoo.api", "zoo.predict", "zoo.evaluate", "zoo.bench", "zoo.calculators", "zoo.pretrained")),
    ("release", ("zoo.release", "zoo.cards", "zoo.publish", "zoo.distribution")),
    (
        "cli",
        (
            "zoo.cli",
            "zoo.cli_console",
            "zoo.cli_use",
            "zoo.cli_artifacts",
            "zoo.cli_train",
            "zoo.cli_lammps",
            "zoo.data.cli",
        ),
    ),
    ("package", ("zoo",)),
)


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    return rank


def modules_of(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def resolve(name: str, modules: dict) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict, package: str):
    """(target, in_function, lineno) for every import of one of our modules, and importlib uses."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found, dynamic = [], []
    is_pkg = path.name == "__init__.py"

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == package:
                        found.append((resolve(alias.name, modules), in_function, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != package:
                    continue
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.append((full if full in modules else resolve(base, modules), in_function, child.lineno))
            elif isinstance(child, ast.Call) and ast.unparse(child.func).endswith("import_module"):
                arg = child.args[0] if child.args else None
                if not isinstance(arg, ast.Constant) or str(arg.value).startswith(package):
                    dynamic.append(child.lineno)
            visit(child, inner)

    visit(tree, False)
    return [(t, f, n) for t, f, n in found if t and t != module], dynamic, tree


def strongly_connected(nodes, edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            connect(v)
    return out


def function_lengths(tree, module):
    """Lines of each function's body, docstring included; the signature is left out, since a typer command
    declares its options there one per line."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.end_lineno - node.body[0].lineno + 1, f"{module}.{node.name}:{node.lineno}"


def main(root: Path) -> None:
    package = root.name
    modules = modules_of(root)
    edges: dict[str, set] = {m: set() for m in modules}
    n_imports = n_function = 0
    dynamic, functions, sizes = [], [], []
    for module, path in modules.items():
        found, dyn, tree = imports_of(module, path, modules, package)
        n_imports += len(found)
        n_function += sum(f for _, f, _ in found)
        for target, _, _ in found:
            edges[module].add(target)
        dynamic += [f"{module}:{line}" for line in dyn]
        functions += function_lengths(tree, module)
        sizes.append((len(path.read_text(encoding="utf-8").splitlines()), module))
    # the package itself (zoo/__init__) is the public entry point: it may import anything
    components = strongly_connected(list(modules), edges)
    cycles = [sorted(c) for c in components if len(c) > 1]
    inner = {m: edges[m] - {package} for m in modules if m != package}
    cycles_below = [sorted(c) for c in strongly_connected(list(inner), inner) if len(c) > 1]
    comp_of = {m: i for i, c in enumerate(components) for m in c}
    level: dict[int, int] = {}

    def level_of(i):
        if i not in level:
            level[i] = 0
            deps = {comp_of[t] for m in components[i] for t in edges[m]} - {i}
            level[i] = 1 + max((level_of(j) for j in deps), default=0)
        return level[i]

    n_levels = max(level_of(i) for i in range(len(components)))
    upward = sorted(
        f"{m} ({LAYERS[layer_of(m)][0]}) -> {t} ({LAYERS[layer_of(t)][0]})"
        for m in modules for t in edges[m] if m != package and layer_of(t) > layer_of(m)
    )  # fmt: skip
    n_edges = sum(len(v) for v in edges.values())
    print(f"modules: {len(modules)}")
    print(f"levels (longest import chain, cycles counted as one): {n_levels}")
    print(f"import edges (module pairs): {n_edges}")
    print(f"internal import statements: {n_imports}, of them inside functions: {n_function}")
    print(f"cycles: {len(cycles)}" + "".join(f"\n  {len(c)} modules: {' '.join(c)}" for c in cycles))
    print(
        f"cycles without the package root: {len(cycles_below)}"
        + "".join(f"\n  {len(c)} modules: {' '.join(c)}" for c in cycles_below)
    )
    print(f"edges up the intended layers: {len(upward)}" + "".join(f"\n  {u}" for u in upward))
    print(
        f"importlib.import_module calls (constant of ours, or a computed name): {len(dynamic)}"
        + "".join(f"\n  {d}" for d in dynamic)
    )
    print("longest modules (lines):")
    for n, m in sorted(sizes, reverse=True)[:10]:
        print(f"  {n:5d} {m}")
    long = sorted(functions, reverse=True)
    print(f"functions over 60 lines: {sum(n > 60 for n, _ in long)}; longest:")
    for n, f in long[:10]:
        print(f"  {n:5d} {f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "zoo").resolve())
