"""The package's shape, read from its source (not by eye): the import graph has no circle, no stage
imports a higher one, and modules and functions stay within the sizes the README promises.

Every import counts, including those inside functions (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "vidcls"

# Stages from the bottom up. A module may import its own stage and stages of a lower rank only; two
# stages of the same rank (training and predict) never import each other.
RANKS = {
    "vidcls": 0,
    "errors": 0,  # the package root imports its API lazily, by name
    "utils": 1,
    "store": 2,
    "models": 2,
    "config": 3,
    "data": 4,
    "features": 4,
    "run": 4,
    "engine": 5,
    "reporting": 6,
    "evaluation": 7,
    "training": 8,
    "predict": 8,
    "serve": 9,
    "cli": 10,  # cli.py, cli_parser.py, demo.py, __main__.py: the commands
}
# Prediction reads what evaluation decided from the run directory (run/: final.json, calibration.json),
# never evaluation's code: a predictor needs no metrics, policy or fitting.
APART = {("predict", "evaluation"), ("serve", "evaluation"), ("serve", "training")}
COMMANDS = {"cli", "cli_parser", "demo", "__main__"}
MAX_MODULE_LINES = 420
MAX_FUNCTION_LINES = 60
MAX_POSITIONAL = 6


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "vidcls"
    return "cli" if parts[1] in COMMANDS else parts[1]


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The vidcls modules ``path`` imports: ``from X import name`` counts as X.name when that is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "vidcls"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "vidcls":
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & known
            found |= subs or {target}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(p, set(mods)) for m, p in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_reader_sees_lazy_and_relative_imports(tmp_path):
    known = {"vidcls.a", "vidcls.b", "vidcls.c", "vidcls.c.d"}
    pkg = tmp_path / "vidcls"
    pkg.mkdir()
    (pkg / "a.py").write_text("from .c import d\n\ndef f():\n    from . import b\n    import vidcls.c\n")
    global SRC
    saved, SRC = SRC, tmp_path
    try:
        assert imports_of(pkg / "a.py", known) == {"vidcls.b", "vidcls.c", "vidcls.c.d"}
    finally:
        SRC = saved
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_anywhere():
    assert cycles(graph()) == []


def test_every_module_has_a_stage():
    assert {stage(m) for m in modules()} <= set(RANKS)


def allowed(here: str, there: str) -> bool:
    """Whether stage ``here`` may import stage ``there``."""
    return here == there or (RANKS[there] < RANKS[here] and (here, there) not in APART)


def test_no_stage_imports_a_higher_or_a_sibling_stage():
    wrong = [
        f"{module} ({stage(module)}) imports {dep} ({stage(dep)})"
        for module, deps in graph().items()
        for dep in deps
        if not allowed(stage(module), stage(dep))
    ]
    assert wrong == []


@pytest.mark.parametrize(
    "here, there, ok",
    [
        ("training", "evaluation", True),
        ("predict", "engine", True),
        ("evaluation", "engine", True),
        ("engine", "run", True),
        ("data", "store", True),
        ("serve", "predict", True),
        ("cli", "training", True),
        ("evaluation", "training", False),
        ("predict", "training", False),
        ("training", "predict", False),
        ("predict", "evaluation", False),
        ("serve", "training", False),
        ("engine", "evaluation", False),
        ("store", "data", False),
        ("data", "training", False),
        ("run", "engine", False),
        ("models", "training", False),
        ("utils", "store", False),
        ("reporting", "evaluation", False),
        ("serve", "cli", False),
    ],
)
def test_the_stage_rule(here, there, ok):
    assert allowed(here, there) is ok


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_sizes(path):
    text = path.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{path.name}: {text.count(chr(10))} lines"
    for fn in _functions(ast.parse(text)):
        lines = fn.end_lineno - fn.lineno + 1
        positional = [a.arg for a in fn.args.posonlyargs + fn.args.args if a.arg not in ("self", "cls")]
        assert lines <= MAX_FUNCTION_LINES, f"{path.name}:{fn.lineno} {fn.name} has {lines} lines"
        assert len(positional) <= MAX_POSITIONAL, f"{path.name}:{fn.lineno} {fn.name} takes {positional}"
