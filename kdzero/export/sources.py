"""The source text of registered ops and the code they call, read from the ops themselves with ``inspect``.

Each op is written once, in ``kdzero.ops``; the exported file carries a copy of that very definition. A
``SourceSet`` collects the definitions one exported file needs: the op functions (renamed ``transform_NAME``,
``distance_NAME``, ``weight_NAME``), then, found by walking each definition's syntax tree, every module-level
helper, class and constant of kdzero it reads, each once and before its first user, and the imports it needs.
Only ``torch``, ``torch.nn``, ``torch.nn.functional`` and ``math`` may be imported by what is exported: an op that
reads anything else cannot be exported, and ``SourceSet`` says so instead of writing a file that fails to import.
"""
from __future__ import annotations

import ast
import inspect
import sys
import textwrap
import types
from collections.abc import Callable

from kdzero.ops._registry import Op

IMPORTS: dict[str, str] = {
    "math": "import math",
    "torch": "import torch",
    "torch.nn.functional": "import torch.nn.functional as F",
    "torch.nn": "from torch import nn",
}
"""The modules an exported file may import, by name, with the line that imports them under the op's own alias."""

_IMPORT_ORDER = tuple(IMPORTS.values())
_CONSTANT_TYPES = (bool, int, float, str, tuple, types.GenericAlias)


def _definition(obj: Callable | type) -> tuple[ast.FunctionDef | ast.ClassDef, list[str]]:
    """The syntax tree of ``obj``'s own definition and its source lines, decorators left out."""
    source = textwrap.dedent(inspect.getsource(obj))
    node = ast.parse(source).body[0]
    if not isinstance(node, ast.FunctionDef | ast.ClassDef):
        raise TypeError(f"{obj!r} is not defined by a def or class statement")
    return node, source.splitlines()[node.lineno - 1: node.end_lineno]


def _free_names(node: ast.FunctionDef | ast.ClassDef) -> list[str]:
    """Names ``node`` reads that it does not bind itself (arguments, assignments), decorators excluded, in order."""
    parts = [child for field, child in ast.iter_fields(node) if field != "decorator_list"]
    nodes = [n for part in parts for item in (part if isinstance(part, list) else [part])
             if isinstance(item, ast.AST) for n in ast.walk(item)]
    bound = {n.arg for n in nodes if isinstance(n, ast.arg)}
    bound |= {n.id for n in nodes if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    loaded = [n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    return [name for name in dict.fromkeys(loaded) if name not in bound]


def _has_docstring(node: ast.FunctionDef | ast.ClassDef) -> bool:
    first = node.body[0]
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def _shifted(line: str, by: int) -> str:
    """``line`` indented ``by`` more columns (fewer when negative, never removing more than its indentation)."""
    if by >= 0:
        return " " * by + line
    return line[min(-by, len(line) - len(line.lstrip())):]


class SourceSet:
    """The definitions, constants and imports of one exported file, each once, every one after what it uses."""

    def __init__(self) -> None:
        self._definitions: dict[str, str] = {}
        self._constants: dict[str, str] = {}
        self._imports: set[str] = set()
        self._origins: dict[str, object] = {}

    def add_op(self, op: Op) -> str:
        """Add registered ``op`` as ``KIND_NAME`` (with a docstring from its registration when its source has
        none); returns that function name."""
        name = f"{op.kind}_{op.name}"
        self._add(op.fn, name, doc=f"{op.name}: {op.formula}. {op.doc}")
        return name

    def add(self, obj: Callable | type, name: str | None = None) -> str:
        """Add a kdzero function or class under ``name`` (default: its own) and whatever it reads; returns the
        name."""
        return self._add(obj, name or obj.__name__)

    def _add(self, obj: Callable | type, name: str, doc: str = "") -> str:
        if self._origins.get(name) is obj:
            return name
        if name in self._origins:
            raise ValueError(f"two different definitions would be exported as {name!r}")
        self._origins[name] = obj
        node, lines = _definition(obj)
        module_globals = sys.modules[obj.__module__].__dict__
        closure = dict(zip(obj.__code__.co_freevars, (c.cell_contents for c in obj.__closure__ or ()))) \
            if isinstance(obj, types.FunctionType) else {}
        for free in _free_names(node):
            if free in closure:
                continue
            if free in module_globals:
                self._depend(free, module_globals[free], obj)
        keyword = "def" if isinstance(node, ast.FunctionDef) else "class"
        lines[0] = lines[0].replace(f"{keyword} {obj.__name__}", f"{keyword} {name}", 1)
        shift = len(name) - len(obj.__name__)  # keep a signature's continuation lines aligned after renaming
        for index in range(1, node.body[0].lineno - node.lineno):
            lines[index] = _shifted(lines[index], shift)
        body_line = node.body[1 if _has_docstring(node) else 0].lineno - node.lineno
        indent = " " * node.body[0].col_offset
        inserted = [f"{indent}{key} = {value!r}" for key, value in closure.items()]  # closure variables, bound
        if not _has_docstring(node) and doc:
            inserted.insert(0, textwrap.fill(" ".join(doc.split()), width=116, initial_indent=f'{indent}"""',
                                             subsequent_indent=indent) + '"""')
        lines[body_line:body_line] = inserted
        self._definitions[name] = "\n".join(lines)
        return name

    def _depend(self, name: str, value: object, user: object) -> None:
        """Make ``value``, read as ``name`` by ``user``, available in the exported file."""
        if isinstance(value, types.ModuleType):
            line = IMPORTS.get(value.__name__)
            if line is None or not line.endswith(f" {name}"):
                raise ValueError(f"{user!r} reads module {value.__name__} as {name!r}; an exported file imports "
                                 f"only {', '.join(IMPORTS.values())}")
            self._imports.add(line)
        elif isinstance(value, types.FunctionType | type) and value.__module__.startswith("kdzero."):
            self._add(value, name)
        elif isinstance(value, _CONSTANT_TYPES):
            text = f"{name} = {value!r}"
            if self._constants.setdefault(name, text) != text:
                raise ValueError(f"two different constants would be exported as {name!r}")
        else:
            raise ValueError(f"{user!r} reads {name!r} ({type(value).__name__}), which an exported file cannot hold")

    def add_import(self, module: str) -> None:
        """Import ``module`` (one of ``IMPORTS``) even if no collected definition reads it."""
        self._imports.add(IMPORTS[module])

    def imports(self) -> list[str]:
        """The import lines, in a fixed order."""
        return [line for line in _IMPORT_ORDER if line in self._imports]

    def constants(self) -> list[str]:
        """``NAME = value`` lines of every constant read, in the order first read."""
        return list(self._constants.values())

    def definitions(self) -> list[str]:
        """Every collected definition's source, each after the definitions it reads."""
        return list(self._definitions.values())
