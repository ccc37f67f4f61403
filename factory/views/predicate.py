"""The ``--where`` language over index columns: tokenizer and parser to an AST (no ``eval``), canonical
rendering, the columns an AST reads, type checking against an Arrow schema, evaluation with pyarrow compute.

Comparisons (``< <= > >= = == != <>``), ``and``/``or``/``not``, parentheses, numbers, quoted strings,
``true``/``false`` and ``x [not] in (a, b, ...)``; ``render`` prints the canonical, re-parseable form.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from factory.format import FactoryError

# ================================================================ the --where language

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<op><=|>=|==|!=|<>|<|>|=)
      | (?P<lp>\()
      | (?P<rp>\))
      | (?P<comma>,)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE | re.ASCII,  # digits and names in ASCII: fullwidth or other Unicode digits are refused
)
MAX_DEPTH = 64  # nested parentheses and 'not's of one expression
MAX_LENGTH = 1_000_000  # characters of one expression (a view of ~110,000 explicit rows)
_KEYWORDS = {"and", "or", "not", "in", "true", "false"}
_OPS = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "=": "==", "==": "==", "!=": "!=", "<>": "!="}


class PredicateError(FactoryError):
    """A --where expression that does not parse or does not fit the index."""


@dataclass(frozen=True)
class Col:
    name: str


@dataclass(frozen=True)
class Lit:
    value: Any  # int | float | str | bool


@dataclass(frozen=True)
class Cmp:
    op: str
    left: Any
    right: Any


@dataclass(frozen=True)
class In:
    operand: Any
    values: tuple
    negated: bool = False


@dataclass(frozen=True)
class Not:
    operand: Any


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or"
    operands: tuple


def _tokenize(text: str) -> list[tuple[str, Any, int]]:
    toks, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            bad = next((i for i in range(pos, len(text)) if not text[i].isspace()), pos)
            if not text[bad].isascii():
                raise PredicateError(f"--where: character {text[bad]!r} at position {bad} is not ASCII; write "
                                     "numbers, names and operators in ASCII (strings may hold any character)")
            raise PredicateError(f"--where: cannot read {text[pos:].strip()[:20]!r} at position {pos}")
        kind = m.lastgroup
        val = m.group(kind)
        start = m.start(kind)
        if kind == "num":
            # a sign glued to a number only after an operator/start/'('/','/keyword
            if val[0] in "+-" and toks and toks[-1][0] in ("num", "str", "rp", "name"):
                raise PredicateError(f"--where: arithmetic is not supported (at position {start})")
            v = float(val) if any(c in val for c in ".eE") else int(val)
            toks.append(("num", v, start))
        elif kind == "str":
            body = val[1:-1]
            toks.append(("str", re.sub(r"\\(.)", r"\1", body), start))
        elif kind == "name":
            low = val.lower()
            toks.append(("kw", low, start) if low in _KEYWORDS else ("name", val, start))
        else:
            toks.append((kind, val, start))
        pos = m.end()
    return toks


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0
        self.depth = 0

    def nest(self):
        """One more level of parentheses or 'not' (a limit, so parsing never recurses deeply)."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            t = self.toks[self.i - 1]
            raise PredicateError(f"--where: nested more than {MAX_DEPTH} deep (parentheses and 'not's) at "
                                 f"position {t[2]}; simplify the expression")

    def peek(self, kind=None, val=None):
        if self.i >= len(self.toks):
            return None
        t = self.toks[self.i]
        if kind is not None and t[0] != kind:
            return None
        if val is not None and t[1] != val:
            return None
        return t

    def take(self, kind, val=None, what=None):
        t = self.peek(kind, val)
        if t is None:
            got = self.toks[self.i] if self.i < len(self.toks) else None
            at = f"{got[1]!r} at position {got[2]}" if got else "end of expression"
            raise PredicateError(f"--where: expected {what or val or kind}, got {at}")
        self.i += 1
        return t

    def parse(self):
        if not self.toks:
            raise PredicateError("--where: empty expression")
        node = self.or_expr()
        if self.i != len(self.toks):
            t = self.toks[self.i]
            raise PredicateError(f"--where: unexpected {t[1]!r} at position {t[2]}")
        return node

    def or_expr(self):
        items = [self.and_expr()]
        while self.peek("kw", "or"):
            self.i += 1
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def and_expr(self):
        items = [self.not_expr()]
        while self.peek("kw", "and"):
            self.i += 1
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def not_expr(self):
        if self.peek("kw", "not"):
            self.i += 1
            self.nest()
            node = Not(self.not_expr())
            self.depth -= 1
            return node
        return self.comparison()

    def comparison(self):
        left = self.operand()
        t = self.peek("op")
        if t:
            self.i += 1
            right = self.operand()
            if self.peek("op"):
                raise PredicateError("--where: chained comparisons are not supported; use 'and'")
            return Cmp(_OPS[t[1]], left, right)
        negated = False
        if self.peek("kw", "not") and self.i + 1 < len(self.toks) and self.toks[self.i + 1][:2] == ("kw", "in"):
            self.i += 1
            negated = True
        if self.peek("kw", "in"):
            self.i += 1
            self.take("lp", what="'(' after 'in'")
            values = [self.literal()]
            while self.peek("comma"):
                self.i += 1
                values.append(self.literal())
            self.take("rp", what="')' closing the 'in' list")
            return In(left, tuple(values), negated)
        return left

    def literal(self):
        t = self.peek()
        if t and t[0] in ("num", "str"):
            self.i += 1
            return Lit(t[1])
        if t and t[0] == "kw" and t[1] in ("true", "false"):
            self.i += 1
            return Lit(t[1] == "true")
        at = f"{t[1]!r} at position {t[2]}" if t else "end of expression"
        raise PredicateError(f"--where: expected a number, a quoted string, true or false, got {at}")

    def operand(self):
        t = self.peek()
        if t is None:
            raise PredicateError("--where: expression ends too early")
        if t[0] == "lp":
            self.i += 1
            self.nest()
            node = self.or_expr()
            self.take("rp", what="')'")
            self.depth -= 1
            return node
        if t[0] == "name":
            self.i += 1
            return Col(t[1])
        return self.literal()


def parse_where(text: str):
    """Parse a --where expression into an AST; raises PredicateError with the position."""
    if not isinstance(text, str):
        raise PredicateError("--where must be a string")
    if len(text) > MAX_LENGTH:
        raise PredicateError(f"--where: {len(text)} characters, over the {MAX_LENGTH} character limit")
    return _Parser(text).parse()


_PREC = {"or": 1, "and": 2, "not": 3}


def _lit(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise PredicateError(f"--where: number {v} is not finite")
        return repr(v)
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def render(node, parent_prec: int = 0) -> str:
    """Canonical text of an AST (minimal parentheses, lower-case keywords, '==' for equality)."""
    if isinstance(node, Col):
        return node.name
    if isinstance(node, Lit):
        return _lit(node.value)
    if isinstance(node, Cmp):
        return f"{render(node.left, 4)} {node.op} {render(node.right, 4)}"
    if isinstance(node, In):
        vals = ", ".join(_lit(v.value) for v in node.values)
        return f"{render(node.operand, 4)} {'not in' if node.negated else 'in'} ({vals})"
    if isinstance(node, Not):
        s = f"not {render(node.operand, _PREC['not'])}"
        return f"({s})" if parent_prec > _PREC["not"] else s
    if isinstance(node, BoolOp):
        p = _PREC[node.op]
        s = f" {node.op} ".join(render(o, p) for o in node.operands)
        return f"({s})" if parent_prec > p else s
    raise TypeError(node)  # pragma: no cover


def columns_of(node) -> set[str]:
    """Index columns an AST reads."""
    if isinstance(node, Col):
        return {node.name}
    if isinstance(node, Lit):
        return set()
    if isinstance(node, Cmp):
        return columns_of(node.left) | columns_of(node.right)
    if isinstance(node, In):
        return columns_of(node.operand) | set().union(*(columns_of(v) for v in node.values))
    if isinstance(node, Not):
        return columns_of(node.operand)
    if isinstance(node, BoolOp):
        return set().union(*(columns_of(o) for o in node.operands))
    return set()


def _kind_of_type(t) -> str:
    import pyarrow as pa

    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return "other"


def _kind_of_lit(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return "string"


def check_types(node, schema) -> str:
    """Type-check an AST against an Arrow schema; returns the node's kind; raises PredicateError."""
    if isinstance(node, Col):
        if node.name not in schema.names:
            raise PredicateError(
                f"--where: unknown column {node.name!r}; the index has: {', '.join(schema.names)}"
            )
        k = _kind_of_type(schema.field(node.name).type)
        if k == "other":
            raise PredicateError(f"--where: column {node.name!r} ({schema.field(node.name).type}) cannot be compared")
        return k
    if isinstance(node, Lit):
        return _kind_of_lit(node.value)
    if isinstance(node, Cmp):
        a, b = check_types(node.left, schema), check_types(node.right, schema)
        if a != b:
            raise PredicateError(f"--where: cannot compare {a} with {b} in '{render(node)}'")
        if a == "bool" and node.op not in ("==", "!="):
            raise PredicateError(f"--where: booleans only support == and != in '{render(node)}'")
        return "bool"
    if isinstance(node, In):
        a = check_types(node.operand, schema)
        for v in node.values:
            if _kind_of_lit(v.value) != a:
                raise PredicateError(f"--where: list of 'in' must hold {a}s in '{render(node)}'")
        return "bool"
    if isinstance(node, (Not, BoolOp)):
        for o in ([node.operand] if isinstance(node, Not) else node.operands):
            if check_types(o, schema) != "bool":
                raise PredicateError(f"--where: '{render(o)}' is not a condition (compare it, e.g. '{render(o)} > 0')")
        return "bool"
    raise TypeError(node)  # pragma: no cover


_FLOATS = {"float": np.float32, "double": np.float64, "halffloat": np.float16}


def arrow_scalar(v, typ=None):
    """``pyarrow.scalar(v, typ)`` of a bool, an int64 or a float, made from a one-value buffer: pyarrow's
    conversion of a Python value first looks for pandas (importing it: ~0.5 CPU s for a filter)."""
    import pyarrow as pa

    if typ is None:
        if isinstance(v, bool):
            typ, raw = pa.bool_(), bytes([int(v)])
        elif isinstance(v, int) and -(1 << 63) <= v < (1 << 63):
            typ, raw = pa.int64(), np.int64(v).tobytes()
        elif isinstance(v, float):
            typ, raw = pa.float64(), np.float64(v).tobytes()
        else:
            return pa.scalar(v)
    elif isinstance(v, float) and str(typ) in _FLOATS:
        with np.errstate(over="ignore"):  # out of the type's range: +-inf, as pyarrow rounds it
            raw = np.array([v], _FLOATS[str(typ)]).tobytes()
    else:
        return pa.scalar(v, typ)
    return pa.Array.from_buffers(typ, 1, [None, pa.py_buffer(raw)])[0]


def evaluate(node, table):
    """Evaluate a type-checked AST on an Arrow table -> boolean ChunkedArray/Array (nulls count as false)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    false = arrow_scalar(False)

    def val(n, like=None):
        if isinstance(n, Col):
            return table.column(n.name)
        if isinstance(n, Lit):
            v = n.value
            if like is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
                t = table.schema.field(like).type
                if pa.types.is_floating(t):  # compare in the column's precision, like torch/numpy do
                    return arrow_scalar(float(v), t)
            return arrow_scalar(v)
        return ev(n)

    def like_of(n):
        return n.name if isinstance(n, Col) else None

    def ev(n):
        if isinstance(n, Col):
            return table.column(n.name)
        if isinstance(n, Lit):
            return arrow_scalar(bool(n.value))
        if isinstance(n, Cmp):
            lcol, rcol = like_of(n.left), like_of(n.right)
            a = val(n.left, rcol)
            b = val(n.right, lcol)
            fn = {"<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal,
                  "==": pc.equal, "!=": pc.not_equal}[n.op]
            return fn(a, b)
        if isinstance(n, In):
            a = val(n.operand)
            vs = [v.value for v in n.values]
            r = pc.is_in(a, value_set=pa.array(vs, type=a.type if hasattr(a, "type") else None))
            return pc.invert(r) if n.negated else r
        if isinstance(n, Not):
            return pc.invert(pc.fill_null(ev(n.operand), false))
        if isinstance(n, BoolOp):
            out = pc.fill_null(ev(n.operands[0]), false)
            f = pc.and_ if n.op == "and" else pc.or_
            for o in n.operands[1:]:
                out = f(out, pc.fill_null(ev(o), false))
            return out
        raise TypeError(n)  # pragma: no cover

    res = ev(node)
    if isinstance(res, pa.Scalar):
        return pa.array(np.full(table.num_rows, bool(res.as_py())))
    return pc.fill_null(res, false)
