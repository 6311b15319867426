"""The package's shape, read from its source with ``ast`` (issue 15): short functions, imports that
point down the layers of docs/architecture.md, no import circles, and function-level imports only
where an optional dependency or start-up time needs them.

The checks read every file under src/verydeep; run this file as a script to print what they find.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "verydeep"

#: Longest function (decorators to last line) allowed without a ``# long: <reason>`` on its def line.
MAX_LINES = 60

#: A function-level import needs one of these on one of its lines: ``# optional: onnx`` (an extra
#: the package works without) or ``# start-up: <why>`` (too slow to import with its module).
IMPORT_REASON = re.compile(r"#\s*(optional|start-up):\s*\S")

#: docs/architecture.md's layers, lowest first: a module may import its own layer or a lower one.
LAYERS = (
    ("errors", "paper"),
    ("runtime",),
    ("models",),
    ("data", "weights"),
    ("inference", "passes"),
    ("evaluate", "localize", "transfer", "perceptual", "report", "train"),
    ("demo", "bench"),
    ("cli", "__main__", "__init__"),
)
LAYER = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    parts = ["verydeep", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def sources() -> dict[str, tuple[Path, list[str], ast.Module]]:
    """Every module of the package: name -> (path, source lines, tree)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        out[module_name(path)] = (path, text.splitlines(), ast.parse(text, str(path)))
    return out


def functions(tree: ast.AST):
    return (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))


def long_functions() -> list[str]:
    """``path:line name (N lines)`` for each function over MAX_LINES without a ``# long:`` reason."""
    found = []
    for path, lines, tree in sources().values():
        for fn in functions(tree):
            start = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
            length = fn.end_lineno - start + 1
            if length > MAX_LINES and "# long:" not in lines[fn.lineno - 1]:
                found.append(
                    f"{path.relative_to(PACKAGE.parent)}:{fn.lineno} {fn.name} ({length} lines)"
                )
    return found


def function_imports() -> list[tuple[str, int, str, bool]]:
    """``(path, line, statement, has_reason)`` for each import inside a function."""
    found = []
    for path, lines, tree in sources().values():
        for fn in functions(tree):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    text = lines[node.lineno - 1 : node.end_lineno]
                    found.append(
                        (
                            str(path.relative_to(PACKAGE.parent)),
                            node.lineno,
                            " ".join(t.strip() for t in text),
                            any(IMPORT_REASON.search(t) for t in text),
                        )
                    )
    # ast.walk visits nested functions again through their parents: one row per import.
    return sorted(set(found))


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """The package modules one import statement names (a ``from X import name`` names X.name when
    that is a module, else X)."""
    known = sources()
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("verydeep"):
        return []
    names = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
    if len(names) < len(node.names) and target in known:
        names.append(target)
    return names


@lru_cache(maxsize=None)
def import_graph() -> dict[str, frozenset[str]]:
    """Module -> the package modules it imports when it is imported (module level, including
    ``if``/``try`` blocks; imports inside functions and under ``if TYPE_CHECKING`` are not run then)."""
    graph = {}
    for name, (path, _lines, tree) in sources().items():
        edges = set()
        todo = list(tree.body)
        while todo:
            node = todo.pop()
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_resolve(name, node, path.name == "__init__.py"))
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    todo.extend(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                todo.extend(
                    node.body
                    + node.orelse
                    + node.finalbody
                    + [s for h in node.handlers for s in h.body]
                )
        edges.discard(name)
        graph[name] = frozenset(edges)
    return graph


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYER["__init__" if len(parts) == 1 else parts[1]]


def upward_imports() -> list[str]:
    """Every import, module level or not, from a lower layer to a higher one."""
    found = []
    for name, (path, _lines, tree) in sources().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _resolve(name, node, path.name == "__init__.py"):
                    if layer_of(target) > layer_of(name):
                        found.append(
                            f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {name} -> {target}"
                        )
    return found


def import_cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    graph = import_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


# ----------------------------------------------------------------------------------------------
# The checks, and checks that the checks can fail.


def test_no_function_over_60_lines_without_a_reason():
    assert long_functions() == []


def test_every_function_level_import_says_why():
    missing = [f"{p}:{line} {text}" for p, line, text, ok in function_imports() if not ok]
    assert missing == []


def test_no_upward_import():
    assert upward_imports() == []


def test_no_import_cycle():
    assert import_cycles() == []


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert "verydeep.models.vgg" in graph["verydeep.train.loop"] and graph["verydeep"] == {
        "verydeep.errors"
    }
    assert "verydeep.errors" in graph["verydeep.runtime.io"] or any(
        "verydeep.errors" in graph[m] for m in graph if m.startswith("verydeep.runtime")
    )
    assert (
        layer_of("verydeep.runtime.io") < layer_of("verydeep.train.loop") < layer_of("verydeep.cli")
    )


def test_the_checks_catch_what_they_look_for(monkeypatch, tmp_path):
    """A fake package with one of each fault: the checks must report all four."""
    (tmp_path / "runtime").mkdir()
    (tmp_path / "train").mkdir()
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "runtime" / "__init__.py").write_text("")
    (tmp_path / "train" / "__init__.py").write_text("")
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    (tmp_path / "runtime" / "a.py").write_text(
        "from verydeep.train import b\n\n"
        f"def long():\n{body}\n\n"
        f"def long_with_reason():  # long: a table of constants\n{body}\n\n"
        "def lazy():\n    import json\n    import onnx  # optional: onnx\n"
    )
    (tmp_path / "train" / "b.py").write_text("from verydeep.runtime import a\n")
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path)
    for cached in (sources, import_graph):
        cached.cache_clear()
    try:
        assert [s.split()[1] for s in long_functions()] == ["long"]
        assert [(t, ok) for _p, _line, t, ok in function_imports()] == [
            ("import json", False),
            ("import onnx  # optional: onnx", True),
        ]
        assert [s.split(" ", 1)[1] for s in upward_imports()] == [
            "verydeep.runtime.a -> verydeep.train.b"
        ]
        assert import_cycles() == [["verydeep.runtime.a", "verydeep.train.b"]]
    finally:
        for cached in (sources, import_graph):
            cached.cache_clear()


def test_every_module_imports_in_a_fresh_interpreter():
    """Function-level imports hid circles before: a fresh interpreter imports every module."""
    script = (
        "import importlib, pkgutil, verydeep\n"
        "for m in pkgutil.walk_packages(verydeep.__path__, 'verydeep.'):\n"
        "    if m.name != 'verydeep.__main__':  # it runs the command line\n"
        "        importlib.import_module(m.name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


if __name__ == "__main__":
    for title, rows in (
        ("long functions", long_functions()),
        (
            "function-level imports without a reason",
            [f"{p}:{line} {t}" for p, line, t, ok in function_imports() if not ok],
        ),
        ("upward imports", upward_imports()),
        ("import cycles", [" <-> ".join(c) for c in import_cycles()]),
    ):
        print(f"== {title}: {len(rows)}")
        print("\n".join(rows))


def test_the_package_root_and_the_command_line_leave_torch_unimported():
    """``import verydeep``, ``import verydeep.cli`` and ``verydeep --help`` load no torch (the root is
    lazy); the public names still resolve on first use, and an unknown one is an AttributeError."""
    probe = (
        "import sys, verydeep, verydeep.cli, verydeep.errors\n"
        "try:\n    verydeep.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)\n"
        "print(verydeep.vgg.__module__, verydeep.load.__module__, verydeep.PerceptualLoss.__name__)\n"
        "print(verydeep.transfer.__name__, 'torch' in sys.modules)\n"
        "try:\n    verydeep.no_such_name\nexcept AttributeError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    lines = done.stdout.strip().splitlines()[-4:]
    assert lines == [
        "False",
        "verydeep.models.vgg verydeep.weights.loader PerceptualLoss",
        "verydeep.transfer True",
        "module 'verydeep' has no attribute 'no_such_name'",
    ], done.stdout


def test_every_module_is_named_on_the_map():
    """docs/architecture.md's folder map names every module of the package in its folder's entry
    (a new module without a line there fails here)."""
    text = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("```", 2)[1]
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        match = re.match(r"^  (\S+)", line)
        if match:
            current = match.group(1).rstrip("/")
            entries[current] = line
        elif current is not None:
            entries[current] += " " + line
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) > 1:
            continue
        entry = entries.get(
            rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.name.removesuffix(".py")
        )
        if entry is None and len(rel.parts) == 1:
            entry = entries.get(rel.name)
        if entry is None or not re.search(rf"\b{re.escape(path.stem)}\b", entry):
            missing.append(str(rel))
    assert missing == [], f"not on docs/architecture.md's map: {missing}"


def test_the_engines_know_no_layer_of_the_net():
    """Issue 25, item 5: the engines (then in runtime/) took VGG's insides by duck typing (``features``,
    ``classifier[0/3/6]``, the fc6 kernel), so the lowest layer depended on the model's layout. They
    now convert what the net hands them (``model.dense_module``); the layout stays in models/."""
    engines = [PACKAGE / "inference" / "engines.py", PACKAGE / "inference" / "openvino_engine.py"]
    leaks = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in sorted((PACKAGE / "runtime").glob("*.py")) + engines
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\.features\b|\.classifier\b|fc6_kernel", line.split("#")[0])
    ]
    assert leaks == []
