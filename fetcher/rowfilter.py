"""``--filter``: a small, safe expression language over input columns, evaluated with pyarrow.compute.

The text is parsed with :mod:`ast` and only a whitelist of node types is accepted (comparisons,
``and``/``or``/``not``, arithmetic, ``in`` lists, ``is None`` and a few functions); it is never
``eval``'d. Evaluation works on whole record batches, so filtering costs a few vector operations per
batch while the input streams. A row is kept only where the expression is true: null counts as false.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fetcher.options import ConfigError

_COMPARE: dict[type[ast.cmpop], str] = {
    ast.Lt: "less",
    ast.LtE: "less_equal",
    ast.Gt: "greater",
    ast.GtE: "greater_equal",
    ast.Eq: "equal",
    ast.NotEq: "not_equal",
}
_ARITH: dict[type[ast.operator], str] = {
    ast.Add: "add",
    ast.Sub: "subtract",
    ast.Mult: "multiply",
    ast.Div: "divide",
    ast.Mod: "mod",
}
# name(args) -> pyarrow.compute function; only these may be called.
_FUNCS: dict[str, Callable[..., Any]] = {
    "len": pc.utf8_length,
    "lower": pc.utf8_lower,
    "abs": pc.abs,
    "is_null": pc.is_null,
    "contains": lambda s, pat: pc.match_substring(s, pat),
    "startswith": lambda s, pat: pc.starts_with(s, pat),
    "endswith": lambda s, pat: pc.ends_with(s, pat),
}


@dataclass(frozen=True)
class RowFilter:
    """A parsed ``--filter`` expression and the input columns it reads."""

    text: str
    tree: ast.expr
    columns: tuple[str, ...]

    def mask(self, table: pa.Table) -> list[bool]:
        """Per-row keep flags for ``table`` (which must hold :attr:`columns`)."""
        value = _eval(self.tree, table)
        if not isinstance(value, pa.ChunkedArray | pa.Array):
            return [bool(value)] * table.num_rows
        if not pa.types.is_boolean(value.type):
            raise ConfigError(f"--filter {self.text!r}: expression is not a true/false test (got {value.type})")
        return [v is True for v in pc.fill_null(value, False).to_pylist()]


def parse_filter(text: str) -> RowFilter:
    """Parse ``--filter`` text; raises ConfigError with one line naming the problem."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ConfigError(f"--filter {text!r}: syntax error ({exc.msg})") from None
    columns: list[str] = []
    _check(tree, text, columns)
    return RowFilter(text=text, tree=tree, columns=tuple(dict.fromkeys(columns)))


def _check(node: ast.AST, text: str, columns: list[str]) -> None:
    """Reject every node type outside the whitelist and collect the column names."""
    if isinstance(node, ast.Name):
        columns.append(node.id)
        return
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id == "col" and _is_str_const(node.args):
            columns.append(node.args[0].value)  # type: ignore[attr-defined]
            return
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
            raise ConfigError(f"--filter {text!r}: only col(), {', '.join(sorted(_FUNCS))} may be called")
        for arg in node.args:
            _check(arg, text, columns)
        return
    allowed = (
        ast.BoolOp,
        ast.And,
        ast.Or,
        ast.UnaryOp,
        ast.Not,
        ast.USub,
        ast.UAdd,
        ast.BinOp,
        ast.Compare,
        ast.Constant,
        ast.List,
        ast.Tuple,
        ast.Load,
        ast.In,
        ast.NotIn,
        ast.Is,
        ast.IsNot,
        *_COMPARE,
        *_ARITH,
    )
    if not isinstance(node, allowed):
        raise ConfigError(f"--filter {text!r}: {type(node).__name__} is not allowed")
    for child in ast.iter_child_nodes(node):
        _check(child, text, columns)


def _is_str_const(args: list[ast.expr]) -> bool:
    return len(args) == 1 and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str)


def _eval(node: ast.AST, table: pa.Table) -> Any:
    if isinstance(node, ast.Name):
        return table.column(node.id)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List | ast.Tuple):
        return [_eval(e, table) for e in node.elts]
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        if node.func.id == "col":
            return table.column(node.args[0].value)  # type: ignore[attr-defined]
        return _FUNCS[node.func.id](*[_eval(a, table) for a in node.args])
    if isinstance(node, ast.BoolOp):
        fn = pc.and_kleene if isinstance(node.op, ast.And) else pc.or_kleene
        out = _eval(node.values[0], table)
        for v in node.values[1:]:
            out = fn(out, _eval(v, table))
        return out
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, table)
        if isinstance(node.op, ast.Not):
            return pc.invert(operand)
        return pc.negate(operand) if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        return pc.call_function(_ARITH[type(node.op)], [_eval(node.left, table), _eval(node.right, table)])
    if isinstance(node, ast.Compare):
        # a < b < c means (a < b) and (b < c), as in Python.
        left = _eval(node.left, table)
        out = None
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _eval(right_node, table)
            part = _compare(op, left, right)
            out = part if out is None else pc.and_kleene(out, part)
            left = right
        return out
    raise AssertionError(f"unchecked node {type(node).__name__}")  # _check rejects these first


def _compare(op: ast.cmpop, left: Any, right: Any) -> Any:
    if isinstance(op, ast.Is | ast.IsNot):
        if right is not None:
            raise ConfigError("--filter: 'is' only compares with None")
        test = pc.is_null(left)
        return pc.invert(test) if isinstance(op, ast.IsNot) else test
    if isinstance(op, ast.In | ast.NotIn):
        test = pc.is_in(left, value_set=pa.array(right))
        return pc.invert(test) if isinstance(op, ast.NotIn) else test
    return pc.call_function(_COMPARE[type(op)], [left, right])
