"""Device groups: static trees (with subgroups) and dynamic groups (with an expression).

Static groups: a device is *directly* in the groups its registration lists; a batch on
a static group covers that group and every subgroup below it, transitively.

Dynamic groups: membership is a ``DynamicGroupExpression`` evaluated against the
device's state. otaflow supports this subset of the platform's SQL-like language:

    expr   := or
    or     := and ("OR" and)*
    and    := unary ("AND" unary)*
    unary  := "NOT" unary | "(" expr ")" | test
    test   := field ("=" | "!=" | "<>") value
            | field ["NOT"] "LIKE" string
            | field ["NOT"] "IN" "(" value ("," value)* ")"
    field  := product_key | name | device_name | ota_module.name | ota_module.version
            | province | city | group_id
    value  := 'single' or "double" quoted string (backslash escapes the next
              character) or a bare number (compared as its text)

Keywords are case-insensitive; values are compared case-sensitively. ``LIKE`` takes
``%`` (any run of characters) and ``_`` (exactly one). ``group_id`` is true when the
device is directly in that static group.

``ota_module.name`` and ``ota_module.version`` describe *one* module: the tests on
``ota_module.*`` joined by the same ``AND`` must all hold for a single module of the
device (``ota_module.name = 'mcu' AND ota_module.version = '1.0'`` means "its mcu
module is on 1.0", not "some module is mcu and some module is on 1.0"). A test on
``ota_module.*`` standing alone means "some module satisfies it". A device that
reported no module version satisfies no ``ota_module`` test.

Ordering comparisons (``<``, ``>``...), ``status`` and tags are not supported: they
are rejected with a ``GroupExpressionError`` naming the position, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from otaflow.domain.devices import DeviceState

Predicate = Callable[[DeviceState], bool]
ModuleTest = Callable[[str, str], bool]  # (module name, version) -> bool

FIELDS = (
    "product_key",
    "name",
    "device_name",
    "ota_module.name",
    "ota_module.version",
    "province",
    "city",
    "group_id",
)
MODULE_FIELDS = ("ota_module.name", "ota_module.version")


class GroupExpressionError(ValueError):
    """A DynamicGroupExpression otaflow cannot evaluate; the message says where and why."""


# -- tokens ------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>!=|<>|<=|>=|=|<|>|\(|\)|,)
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<num>-?[0-9][0-9.]*)
    """,
    re.VERBOSE,
)
_KEYWORDS = frozenset({"and", "or", "not", "like", "in"})


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "str", "op", "word", "kw", "num", "end"
    text: str
    pos: int


def tokenize(source: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise GroupExpressionError(f"unexpected character {source[pos]!r} at {pos}")
        kind = m.lastgroup or ""
        text = m.group()
        if kind == "str":
            tokens.append(Token("str", re.sub(r"\\(.)", r"\1", text[1:-1]), pos))
        elif kind == "word" and text.lower() in _KEYWORDS:
            tokens.append(Token("kw", text.lower(), pos))
        elif kind != "ws":
            tokens.append(Token(kind, text, pos))
        pos = m.end()
    tokens.append(Token("end", "", len(source)))
    return tokens


# -- syntax tree -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Test:
    field: str
    op: str  # "=", "!=", "like", "not like", "in", "not in"
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Node, ...]


Node = Test | Not | And | Or


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, what: str, tok: Token | None = None) -> GroupExpressionError:
        tok = tok or self.tok
        found = tok.text or "end of expression"
        return GroupExpressionError(f"{what} at {tok.pos} (found {found!r})")

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise GroupExpressionError("empty expression")
        node = self.or_()
        if self.tok.kind != "end":
            raise self.fail("expected AND, OR or the end")
        return node

    def or_(self) -> Node:
        parts = [self.and_()]
        while self.tok.kind == "kw" and self.tok.text == "or":
            self.take()
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_(self) -> Node:
        parts = [self.unary()]
        while self.tok.kind == "kw" and self.tok.text == "and":
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def unary(self) -> Node:
        tok = self.tok
        if tok.kind == "kw" and tok.text == "not":
            self.take()
            return Not(self.unary())
        if tok.kind == "op" and tok.text == "(":
            self.take()
            node = self.or_()
            if not (self.tok.kind == "op" and self.tok.text == ")"):
                raise self.fail("expected ')'")
            self.take()
            return node
        return self.test()

    def value(self) -> str:
        tok = self.take()
        if tok.kind in ("str", "num"):
            return tok.text
        raise self.fail("expected a quoted value or a number", tok)

    def test(self) -> Test:
        tok = self.take()
        if tok.kind != "word":
            raise self.fail("expected a field name", tok)
        name = tok.text.lower()
        if name not in FIELDS:
            raise GroupExpressionError(
                f"unsupported field {tok.text!r} at {tok.pos}; supported: {', '.join(FIELDS)}"
            )
        if name == "device_name":
            name = "name"
        negated = False
        if self.tok.kind == "kw" and self.tok.text == "not":
            self.take()
            negated = True
        op = self.take()
        if op.kind == "op" and op.text in ("=", "!=", "<>") and not negated:
            return Test(name, "=" if op.text == "=" else "!=", (self.value(),))
        if op.kind == "kw" and op.text == "like":
            pattern = self.take()
            if pattern.kind != "str":
                raise self.fail("LIKE takes a quoted pattern", pattern)
            return Test(name, "not like" if negated else "like", (pattern.text,))
        if op.kind == "kw" and op.text == "in":
            if not (self.tok.kind == "op" and self.tok.text == "("):
                raise self.fail("IN takes a parenthesised list")
            self.take()
            values = [self.value()]
            while self.tok.kind == "op" and self.tok.text == ",":
                self.take()
                values.append(self.value())
            if not (self.tok.kind == "op" and self.tok.text == ")"):
                raise self.fail("expected ',' or ')'")
            self.take()
            return Test(name, "not in" if negated else "in", tuple(values))
        if op.kind == "op" and op.text in ("<", ">", "<=", ">="):
            raise GroupExpressionError(f"ordering comparison {op.text!r} at {op.pos} unsupported")
        raise self.fail("expected =, !=, <>, LIKE or IN", op)


def parse_expression(source: str) -> Node:
    """The syntax tree of a DynamicGroupExpression, or ``GroupExpressionError``."""
    return _Parser(source).parse()


def check_expression(source: str) -> Node:
    """``parse_expression`` plus the console doc's rule for module data: a group that
    searches by OTA module data names both ``ota_module.name`` and ``ota_module.version``."""
    node = parse_expression(source)
    used = {
        tok.text.lower(): tok.pos
        for tok in reversed(tokenize(source))
        if tok.kind == "word" and tok.text.lower() in MODULE_FIELDS
    }
    if used and len(used) < len(MODULE_FIELDS):
        [(name, pos)] = used.items()
        other = next(f for f in MODULE_FIELDS if f != name)
        raise GroupExpressionError(f"{name} at {pos} needs {other} in the same expression")
    return node


def pinned_products(node: Node) -> frozenset[str] | None:
    """The products a device must be of to match (None: any product).

    ``product_key = 'x'`` or ``product_key IN (...)`` at the top, or in a top-level
    AND, pins them; readers of the registry then scan only those products' devices.
    """
    tests = node.operands if isinstance(node, And) else (node,)
    for test in tests:
        if isinstance(test, Test) and test.field == "product_key" and test.op in ("=", "in"):
            return frozenset(test.values)
    return None


# -- evaluation --------------------------------------------------------------------------


def like_regex(pattern: str) -> re.Pattern[str]:
    out = []
    for ch in pattern:
        if ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _value_test(test: Test) -> Callable[[str | None], bool]:
    values = test.values
    if test.op == "=":
        want = values[0]
        return lambda v: v == want
    if test.op == "!=":
        want = values[0]
        return lambda v: v is not None and v != want
    if test.op in ("in", "not in"):
        allowed = frozenset(values)
        if test.op == "in":
            return lambda v: v in allowed
        return lambda v: v is not None and v not in allowed
    regex = like_regex(values[0])
    if test.op == "like":
        return lambda v: v is not None and regex.fullmatch(v) is not None
    return lambda v: v is not None and regex.fullmatch(v) is None


def _module_test(test: Test) -> ModuleTest:
    check = _value_test(test)
    if test.field == "ota_module.name":
        return lambda name, version: check(name)
    return lambda name, version: check(version)


def _device_test(test: Test) -> Predicate:
    if test.field == "group_id":
        # Over the device's direct static groups: "=", IN and LIKE hold when some group
        # passes; "!=", NOT IN and NOT LIKE when no group passes the positive form.
        negative = {"!=": "=", "not in": "in", "not like": "like"}
        positive = _value_test(Test(test.field, negative.get(test.op, test.op), test.values))
        if test.op in negative:
            return lambda s: not any(positive(g) for g in s.groups)
        return lambda s: any(positive(g) for g in s.groups)
    check = _value_test(test)
    getter: Callable[[DeviceState], str | None] = {
        "product_key": lambda s: s.product_key,
        "name": lambda s: s.device_name,
        "province": lambda s: s.province,
        "city": lambda s: s.city,
    }[test.field]
    return lambda s: check(getter(s))


def _some_module(tests: list[ModuleTest]) -> Predicate:
    def pred(state: DeviceState) -> bool:
        return any(all(t(name, version) for t in tests) for name, version in state.modules.items())

    return pred


def compile_node(node: Node) -> Predicate:
    if isinstance(node, Test):
        if node.field in MODULE_FIELDS:
            return _some_module([_module_test(node)])
        return _device_test(node)
    if isinstance(node, Not):
        inner = compile_node(node.operand)
        return lambda s: not inner(s)
    if isinstance(node, Or):
        parts = [compile_node(n) for n in node.operands]
        return lambda s: any(p(s) for p in parts)
    # AND: the ota_module tests at this level bind to one and the same module.
    module_tests = [
        _module_test(n) for n in node.operands if isinstance(n, Test) and n.field in MODULE_FIELDS
    ]
    others = [
        compile_node(n)
        for n in node.operands
        if not (isinstance(n, Test) and n.field in MODULE_FIELDS)
    ]
    if module_tests:
        others.append(_some_module(module_tests))
    return lambda s: all(p(s) for p in others)


def compile_expression(source: str) -> Predicate:
    """A membership test for a DynamicGroupExpression (``GroupExpressionError`` if invalid)."""
    return compile_node(parse_expression(source))


def _never(state: DeviceState) -> bool:
    return False


# -- the groups a partition knows ---------------------------------------------------------


@dataclass(slots=True)
class Group:
    group_id: str
    group_type: str  # STATIC or DYNAMIC
    parent_id: str | None = None
    expression: str | None = None
    deleted: bool = False
    # Why a dynamic group's expression matches nothing (invalid expression), if it does.
    error: str | None = None
    matches: Predicate = field(default=_never, repr=False, compare=False)

    @classmethod
    def from_control(cls, record: Mapping[str, Any]) -> Group:
        group = cls(
            group_id=record["group_id"],
            group_type=record["group_type"],
            parent_id=record.get("parent_id"),
            expression=record.get("expression"),
            deleted=bool(record.get("deleted", False)),
        )
        if group.group_type == "DYNAMIC" and not group.deleted and group.expression:
            try:
                group.matches = compile_expression(group.expression)
            except GroupExpressionError as exc:
                group.error = str(exc)
        return group


class GroupRegistry:
    """Every group one device partition has been told about (broadcast ``GroupControl``)."""

    def __init__(self, groups: Iterable[Group] = ()) -> None:
        self._by_id: dict[str, Group] = {}
        self._children: dict[str, set[str]] = {}
        for group in groups:
            self.put(group)

    def get(self, group_id: str) -> Group | None:
        return self._by_id.get(group_id)

    def put(self, group: Group) -> Group | None:
        """Add or replace a group; returns the one it replaced."""
        old = self._by_id.get(group.group_id)
        if old is not None and old.parent_id is not None:
            self._children.get(old.parent_id, set()).discard(old.group_id)
        self._by_id[group.group_id] = group
        if group.parent_id is not None and not group.deleted:
            self._children.setdefault(group.parent_id, set()).add(group.group_id)
        return old

    def subtree(self, group_id: str) -> frozenset[str]:
        """A static group and all its subgroups, transitively (cycle-safe)."""
        seen: set[str] = set()
        todo = [group_id]
        while todo:
            gid = todo.pop()
            if gid in seen:
                continue
            seen.add(gid)
            todo.extend(self._children.get(gid, ()))
        return frozenset(seen)

    def is_member(self, group_id: str, state: DeviceState) -> bool:
        """Is the device in this dynamic group now (by its expression)?"""
        group = self._by_id.get(group_id)
        if group is None or group.deleted or group.group_type != "DYNAMIC":
            return False
        return group.matches(state)
