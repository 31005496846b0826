"""The detection condition language: tokenizer, recursive-descent parser and compiler to closures.

A condition is what Falco users know, over the fields of ``heron.detect.fields``::

    type = process.exec and process.name in (shell_binaries)
      and (process.parent_name in (server_binaries) or process.parent_exe startswith /opt/app/)

    type = file.change and new.mode & 0o6000 and not old.mode & 0o6000

Predicates: ``FIELD [& MASK] OP VALUE`` with OP one of = != < <= > >=; ``FIELD in (v, ...)`` or
``FIELD in list_name``; ``FIELD glob|contains|icontains|startswith|endswith VALUE-or-(v, ...)`` (any
of several values); ``FIELD exists``; ``FIELD & MASK`` alone (any of the bits set). Then
``and``/``or``/``not``, parentheses, macro names, and ``true``/``false``. Values are bare words
(``/dev/tcp/``, ``*.nanopool.org``) or quoted strings ('a b', "x\\"y"); numbers accept 0x/0o/0b.

Semantics: a test on a list field holds when it holds for any element; an absent field fails every
test except that ``a != b`` is ``not (a = b)``; `exists` means present, not null, not empty.
Everything is checked at compile time (unknown field, macro or list; operator not valid for the
field's kind; number that does not parse; unknown event type) with line and column. Nothing is
ever evaluated as Python: the compiler builds closures. Limits bound hostile input: condition
length, tokens, nesting depth, macro depth and the expanded size of a condition.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from heron.detect.fields import BOOL, DICT, FLOAT, INT, STR, STRUCT, FieldSpec, catalogue, event_type_names

MAX_CONDITION_CHARS = 64 * 1024
MAX_TOKENS = 8_192
MAX_DEPTH = 64  # nesting of parentheses and `not` in one condition; of and/or/not once macros are expanded
MAX_MACRO_DEPTH = 16  # macros referring to macros
MAX_VALUE_CHARS = 4_096
MAX_LIST_ITEMS = 10_000
MAX_EXPANDED_NODES = 20_000  # a condition's size once macros are expanded (macros may share)

Predicate = Callable[[Mapping[str, Any]], bool]

KEYWORDS = frozenset({"and", "or", "not", "in", "glob", "contains", "icontains", "startswith", "endswith",
                      "exists", "true", "false"})
STRING_OPS = ("glob", "contains", "icontains", "startswith", "endswith")
COMPARE_OPS = ("=", "==", "!=", "<", "<=", ">", ">=")
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_BARE_STOP = frozenset(" \t\r\n(),'\"=!<>&")


class ConditionError(ValueError):
    """A condition that cannot be compiled; ``line``/``column`` are 1-based within its text."""

    def __init__(self, message: str, line: int = 0, column: int = 0, where: str = "") -> None:
        self.reason = message
        self.line = line
        self.column = column
        self.where = where
        self.macro_chain: list[str] = []  # macros the error sits in, outermost first
        self.inner = ""  # the innermost error, when inside macros
        pos = f"line {line}, column {column}: " if line else ""
        super().__init__(f"{where}{': ' if where else ''}{pos}{message}")


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "word", "string", "op", "(", ")", ",", "end"
    text: str
    offset: int


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def tokenize(text: str, where: str = "") -> list[Token]:
    """Split a condition into tokens; raises ConditionError with the position of the first bad one."""

    def fail(message: str, offset: int) -> ConditionError:
        return ConditionError(message, *_position(text, offset), where=where)

    if len(text) > MAX_CONDITION_CHARS:
        raise ConditionError(f"condition is {len(text)} characters long (limit {MAX_CONDITION_CHARS})", where=where)
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
            continue
        if len(tokens) >= MAX_TOKENS:
            raise fail(f"condition has more than {MAX_TOKENS} tokens", i)
        if c in "(),":
            tokens.append(Token(c, c, i))
            i += 1
        elif c in "=!<>":
            two = text[i:i + 2]
            if two in ("==", "!=", "<=", ">="):
                tokens.append(Token("op", two, i))
                i += 2
            elif c == "!":
                raise fail("'!' must be followed by '=' (use 'not' to negate)", i)
            else:
                tokens.append(Token("op", c, i))
                i += 1
        elif c == "&":
            tokens.append(Token("op", "&", i))
            i += 1
        elif c in "'\"":
            start, i = i, i + 1
            out: list[str] = []
            while True:
                if i >= n:
                    raise fail("unterminated string", start)
                ch = text[i]
                if ch == c:
                    i += 1
                    break
                if ch == "\\" and i + 1 < n and text[i + 1] in ("\\", "'", '"'):
                    ch = text[i + 1]
                    i += 1
                out.append(ch)
                i += 1
            value = "".join(out)
            if len(value) > MAX_VALUE_CHARS:
                raise fail(f"string is {len(value)} characters long (limit {MAX_VALUE_CHARS})", start)
            tokens.append(Token("string", value, start))
        elif not c.isprintable():
            raise fail(f"unexpected character {c!r}", i)
        else:
            start = i
            while i < n and text[i] not in _BARE_STOP and text[i].isprintable():
                i += 1
            if i - start > MAX_VALUE_CHARS:
                raise fail(f"word is {i - start} characters long (limit {MAX_VALUE_CHARS})", start)
            tokens.append(Token("word", text[start:i], start))
    tokens.append(Token("end", "", n))
    return tokens


# --- syntax tree -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Value:
    text: str
    quoted: bool
    offset: int


@dataclass(frozen=True, slots=True)
class Compare:
    field: str
    op: str  # one of COMPARE_OPS, "in", STRING_OPS, "exists", "&"
    values: tuple[Value, ...]
    mask: Value | None
    offset: int  # of the field name
    list_refs: tuple[tuple[str, int], ...] = ()  # list names referenced, with their offsets


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # "and" / "or"
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Node


@dataclass(frozen=True, slots=True)
class MacroRef:
    name: str
    offset: int


@dataclass(frozen=True, slots=True)
class Const:
    value: bool


Node = Compare | BoolOp | Not | MacroRef | Const


class _Parser:
    def __init__(self, text: str, where: str, is_macro: Callable[[str], bool], is_list: Callable[[str], bool]):
        self.text = text
        self.where = where
        self.tokens = tokenize(text, where)
        self.pos = 0
        self.depth = 0
        self.is_macro = is_macro
        self.is_list = is_list

    def error(self, message: str, tok: Token | int) -> ConditionError:
        offset = tok if isinstance(tok, int) else tok.offset
        return ConditionError(message, *_position(self.text, offset), where=self.where)

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def take(self) -> Token:
        tok = self.tokens[self.pos]
        if tok.kind != "end":
            self.pos += 1
        return tok

    def is_word(self, tok: Token, *words: str) -> bool:
        return tok.kind == "word" and tok.text in words

    def describe(self, tok: Token) -> str:
        return "end of condition" if tok.kind == "end" else repr(tok.text)

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise self.error("empty condition", self.peek())
        node = self.parse_or()
        tok = self.peek()
        if tok.kind != "end":
            if tok.kind == ")":
                raise self.error("unbalanced ')'", tok)
            raise self.error(f"expected 'and', 'or' or end of condition, found {self.describe(tok)}", tok)
        return node

    def parse_or(self) -> Node:
        items = [self.parse_and()]
        while self.is_word(self.peek(), "or"):
            self.take()
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def parse_and(self) -> Node:
        items = [self.parse_unary()]
        while self.is_word(self.peek(), "and"):
            self.take()
            items.append(self.parse_unary())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def enter(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"condition nests deeper than {MAX_DEPTH} levels", tok)

    def parse_unary(self) -> Node:
        tok = self.peek()
        if self.is_word(tok, "not"):
            self.take()
            self.enter(tok)
            node = Not(self.parse_unary())
            self.depth -= 1
            return node
        return self.parse_primary()

    def parse_primary(self) -> Node:
        tok = self.take()
        if tok.kind == "(":
            self.enter(tok)
            node = self.parse_or()
            close = self.take()
            if close.kind != ")":
                raise self.error(f"expected ')' to close the '(' at column {_position(self.text, tok.offset)[1]}"
                                 f", found {self.describe(close)}", close)
            self.depth -= 1
            return node
        if tok.kind != "word":
            raise self.error(f"expected a field, macro or '(', found {self.describe(tok)}", tok)
        if tok.text in ("true", "false"):
            return Const(tok.text == "true")
        if tok.text in KEYWORDS:
            raise self.error(f"expected a field, macro or '(', found keyword {tok.text!r}", tok)
        nxt = self.peek()
        if nxt.kind == "op" or (nxt.kind == "word" and nxt.text in ("in", "exists", *STRING_OPS)):
            return self.parse_predicate(tok)
        if self.is_macro(tok.text):
            return MacroRef(tok.text, tok.offset)
        if tok.text in catalogue():
            raise self.error(f"field {tok.text!r} needs an operator (=, in, glob, exists...)", nxt)
        hint = _suggest(tok.text, catalogue())
        raise self.error(f"unknown macro or field {tok.text!r}{hint}", tok)

    def parse_predicate(self, name: Token) -> Compare:
        if not FIELD_RE.match(name.text) or name.text not in catalogue():
            raise self.error(f"unknown field {name.text!r}{_suggest(name.text, catalogue())}", name)
        mask: Value | None = None
        op = self.take()
        if op.kind == "op" and op.text == "&":
            mask = self.parse_value(expect="a number after '&'")
            after = self.peek()
            if not (after.kind == "op" and after.text != "&"):
                return Compare(name.text, "&", (), mask, name.offset)
            op = self.take()
        if op.kind == "op" and op.text in COMPARE_OPS:
            return Compare(name.text, op.text, (self.parse_value(),), mask, name.offset)
        if mask is not None:
            raise self.error("after 'FIELD & MASK' only a comparison (= != < <= > >=) may follow", op)
        if op.text == "exists":
            return Compare(name.text, "exists", (), None, name.offset)
        if op.text == "in":
            values, refs = self.parse_value_list(single=False)
            return Compare(name.text, "in", values, None, name.offset, refs)
        # string operators take one value or a parenthesized list / list name
        values, refs = self.parse_value_list(single=True)
        return Compare(name.text, op.text, values, None, name.offset, refs)

    def parse_value(self, expect: str = "a value") -> Value:
        tok = self.take()
        if tok.kind == "string":
            return Value(tok.text, True, tok.offset)
        if tok.kind == "word" and tok.text not in ("and", "or", "not"):
            return Value(tok.text, False, tok.offset)
        raise self.error(f"expected {expect}, found {self.describe(tok)}", tok)

    def parse_value_list(self, single: bool) -> tuple[tuple[Value, ...], tuple[tuple[str, int], ...]]:
        tok = self.peek()
        refs: list[tuple[str, int]] = []
        if tok.kind == "word" and self.is_list(tok.text):
            self.take()
            return (), ((tok.text, tok.offset),)
        if tok.kind != "(":
            if single:
                return (self.parse_value(),), ()
            raise self.error(f"expected '(' or a list name after 'in', found {self.describe(tok)}", tok)
        open_tok = self.take()
        values: list[Value] = []
        while True:
            v = self.parse_value()
            if not v.quoted and self.is_list(v.text):
                refs.append((v.text, v.offset))
            else:
                values.append(v)
            if len(values) > MAX_LIST_ITEMS:
                raise self.error(f"more than {MAX_LIST_ITEMS} values", v.offset)
            sep = self.take()
            if sep.kind == ")":
                break
            if sep.kind != ",":
                raise self.error(f"expected ',' or ')' in the list opened at column "
                                 f"{_position(self.text, open_tok.offset)[1]}, found {self.describe(sep)}", sep)
        return tuple(values), tuple(refs)


def _suggest(name: str, known: Mapping[str, object]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse(text: str, *, where: str = "", macros: Mapping[str, object] | None = None,
          lists: Mapping[str, object] | None = None) -> Node:
    """Parse a condition into its syntax tree; macro and list names are told apart by the mappings."""
    macro_names = macros or {}
    list_names = lists or {}
    return _Parser(text, where, macro_names.__contains__, list_names.__contains__).parse()


# --- compiler ----------------------------------------------------------------------------------


@dataclass
class Condition:
    """A compiled condition: ``matches(event_dict)``, and the event types it can match (None: any)."""

    text: str
    matches: Predicate
    event_types: frozenset[str] | None
    fields: frozenset[str]
    macros: frozenset[str]
    lists: frozenset[str]


@dataclass
class Definitions:
    """Named macros (condition text) and lists (values; items may name other lists), with an origin
    each ("file:line") for error messages. ``compile`` shares compiled macros between conditions."""

    macros: dict[str, str] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    _macro_cache: dict[str, _Compiled] = field(default_factory=dict, repr=False)
    _list_cache: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def list_values(self, name: str, stack: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A list's values with nested list names expanded; ConditionError on cycles or overflow."""
        cached = self._list_cache.get(name)
        if cached is not None:
            return cached
        where = f"list {name!r} ({self.origins.get('list:' + name, '?')})"
        if name in stack:
            raise ConditionError(f"list {name!r} includes itself through {' -> '.join((*stack, name))}", where=where)
        if len(stack) > MAX_DEPTH:
            raise ConditionError(f"lists nest deeper than {MAX_DEPTH}", where=where)
        out: list[str] = []
        for item in self.lists[name]:
            if item in self.lists:
                out.extend(self.list_values(item, (*stack, name)))
            else:
                out.append(item)
            if len(out) > MAX_LIST_ITEMS:
                raise ConditionError(f"list has more than {MAX_LIST_ITEMS} values", where=where)
        values = tuple(dict.fromkeys(out))
        self._list_cache[name] = values
        return values

    def compile(self, text: str, where: str = "") -> Condition:
        tree = parse(text, where=where, macros=self.macros, lists=self.lists)
        compiled = _Compiler(self, text, where).compile(tree, 0, ())
        return Condition(text, compiled.predicate, compiled.event_types, compiled.fields, compiled.macros,
                         compiled.lists)

    def check_macro(self, name: str) -> None:
        """Compile one macro alone (errors surface even when no rule uses it)."""
        self._compile_macro(name, 0, ())

    def _compile_macro(self, name: str, depth: int, stack: tuple[str, ...]) -> _Compiled:
        cached = self._macro_cache.get(name)
        if cached is not None:
            return cached
        where = f"macro {name!r} ({self.origins.get('macro:' + name, '?')})"
        if name in stack:
            raise ConditionError(f"macro {name!r} refers to itself through {' -> '.join((*stack, name))}",
                                 where=where)
        text = self.macros[name]
        tree = parse(text, where=where, macros=self.macros, lists=self.lists)
        compiled = _Compiler(self, text, where).compile(tree, depth, (*stack, name))
        self._macro_cache[name] = compiled
        return compiled


@dataclass(frozen=True)
class _Compiled:
    predicate: Predicate
    event_types: frozenset[str] | None
    size: int  # nodes once macros are expanded
    depth: int  # nesting once macros are expanded
    fields: frozenset[str]
    macros: frozenset[str]
    lists: frozenset[str]


def _true(ev: Mapping[str, Any]) -> bool:
    return True


def _false(ev: Mapping[str, Any]) -> bool:
    return False


class _Compiler:
    def __init__(self, defs: Definitions, text: str, where: str) -> None:
        self.defs = defs
        self.text = text
        self.where = where

    def error(self, message: str, offset: int) -> ConditionError:
        return ConditionError(message, *_position(self.text, offset), where=self.where)

    def compile(self, node: Node, depth: int, stack: tuple[str, ...]) -> _Compiled:
        empty: frozenset[str] = frozenset()
        if depth > 2 * MAX_DEPTH:
            raise ConditionError(f"condition nests deeper than {2 * MAX_DEPTH} levels once macros are expanded",
                                 where=self.where)
        if isinstance(node, Const):
            return _Compiled(_true if node.value else _false, None if node.value else frozenset(), 1, 1,
                             empty, empty, empty)
        if isinstance(node, MacroRef):
            if len(stack) >= MAX_MACRO_DEPTH:
                raise self.error(f"macros nest deeper than {MAX_MACRO_DEPTH}", node.offset)
            try:
                inner = self.defs._compile_macro(node.name, depth + 1, stack)
            except ConditionError as err:
                chain = [node.name, *err.macro_chain]
                wrapped = ConditionError(f"in macro {' -> '.join(chain)}: {err.inner or err}",
                                         *_position(self.text, node.offset), where=self.where)
                wrapped.macro_chain, wrapped.inner = chain, err.inner or str(err)
                raise wrapped from None
            if depth + inner.depth > 2 * MAX_DEPTH:
                raise self.error(f"condition nests deeper than {2 * MAX_DEPTH} levels once macros are expanded",
                                 node.offset)
            return _Compiled(inner.predicate, inner.event_types, inner.size, inner.depth + 1, inner.fields,
                             inner.macros | {node.name}, inner.lists)
        if isinstance(node, Not):
            inner = self.compile(node.item, depth + 1, stack)
            pred = inner.predicate

            def negate(ev: Mapping[str, Any]) -> bool:
                return not pred(ev)

            return _Compiled(negate, None, inner.size + 1, inner.depth + 1, inner.fields, inner.macros, inner.lists)
        if isinstance(node, BoolOp):
            parts = [self.compile(item, depth + 1, stack) for item in node.items]
            size = 1 + sum(p.size for p in parts)
            if size > MAX_EXPANDED_NODES:
                raise ConditionError(f"condition expands to more than {MAX_EXPANDED_NODES} tests", where=self.where)
            preds = tuple(p.predicate for p in parts)
            types = _and_types(parts) if node.op == "and" else _or_types(parts)
            return _Compiled(_all(preds) if node.op == "and" else _any(preds), types, size,
                             1 + max(p.depth for p in parts), frozenset().union(*(p.fields for p in parts)),
                             frozenset().union(*(p.macros for p in parts)),
                             frozenset().union(*(p.lists for p in parts)))
        return self.compile_compare(node)

    def compile_compare(self, node: Compare) -> _Compiled:
        spec = catalogue()[node.field]
        values = list(node.values)
        for name, offset in node.list_refs:
            try:
                values.extend(Value(v, True, offset) for v in self.defs.list_values(name))
            except ConditionError as err:
                raise self.error(f"in list {name!r}: {err}", offset) from None
        pred, types = self.build(spec, node, values)
        return _Compiled(pred, types, 1, 1, frozenset({node.field}), frozenset(),
                         frozenset(name for name, _ in node.list_refs))

    def convert(self, spec: FieldSpec, kind: str, value: Value) -> Any:
        if kind == STR:
            return value.text
        if kind == BOOL:
            if value.text in ("true", "false"):
                return value.text == "true"
            raise self.error(f"field {spec.path!r} is a boolean: expected true or false, not {value.text!r}",
                             value.offset)
        if kind == INT:
            try:
                return int(value.text.replace("_", ""), 0)
            except ValueError:
                raise self.error(f"field {spec.path!r} is a number: {value.text!r} is not an integer"
                                 " (octal is written 0o755)", value.offset) from None
        try:
            return float(value.text)
        except ValueError:
            raise self.error(f"field {spec.path!r} is a number: {value.text!r} is not a number",
                             value.offset) from None

    def build(self, spec: FieldSpec, node: Compare, values: list[Value]) -> tuple[Predicate, frozenset[str] | None]:
        op, kind = node.op, spec.kind
        if op == "exists":
            raw = spec.raw_getter()
            return (_list_exists(raw) if spec.is_list else _scalar_exists(raw)), None
        if kind in (DICT, STRUCT):
            raise self.error(f"field {spec.path!r} is a {'mapping' if kind == DICT else 'record'}: only 'exists' "
                             "applies (name one of its fields instead)", node.offset)
        get = spec.getter()
        if node.mask is not None or op == "&":
            if kind != INT:
                raise self.error(f"'&' needs a numeric field, {spec.path!r} is {kind}", node.offset)
            assert node.mask is not None
            mask = self.convert(spec, INT, node.mask)
            get = _masked(get, mask, spec.is_list)
            if op == "&":
                return _lift(get, spec.is_list, _nonzero), None
        if op in STRING_OPS and kind != STR:
            raise self.error(f"'{op}' needs a text field, {spec.path!r} is {kind}", node.offset)
        if op in ("<", "<=", ">", ">=") and kind not in (INT, FLOAT):
            raise self.error(f"'{op}' needs a numeric field, {spec.path!r} is {kind}", node.offset)
        if not values:
            raise self.error(f"'{op}' has no values (empty list)", node.offset)
        lits = [self.convert(spec, kind, v) for v in values]
        types: frozenset[str] | None = None
        if spec.path == "type" and op in ("=", "==", "!=", "in"):
            known = event_type_names()
            for v, lit in zip(values, lits, strict=True):
                if lit not in known:
                    raise self.error(f"unknown event type {lit!r}{_suggest(lit, dict.fromkeys(known))}", v.offset)
            types = frozenset(lits) if op != "!=" else None
        test = self.test_for(op, lits, values)
        pred = _lift(get, spec.is_list, test)
        if op == "!=":
            pred = _negated(pred)
        return pred, types

    def test_for(self, op: str, lits: list[Any], values: list[Value]) -> Callable[[Any], bool]:
        lit = lits[0]
        if op in ("=", "==", "!="):
            return lambda v: v == lit
        if op == "in":
            members = frozenset(lits)
            return lambda v: not isinstance(v, (list, dict)) and v in members
        if op == "<":
            return lambda v: _is_num(v) and v < lit
        if op == "<=":
            return lambda v: _is_num(v) and v <= lit
        if op == ">":
            return lambda v: _is_num(v) and v > lit
        if op == ">=":
            return lambda v: _is_num(v) and v >= lit
        strs: tuple[str, ...] = tuple(lits)
        if op == "startswith":
            return lambda v: isinstance(v, str) and v.startswith(strs)
        if op == "endswith":
            return lambda v: isinstance(v, str) and v.endswith(strs)
        if op == "contains":
            if len(strs) == 1:
                return lambda v: isinstance(v, str) and lit in v
            return lambda v: isinstance(v, str) and any(s in v for s in strs)
        if op == "icontains":
            lowered = tuple(s.lower() for s in strs)
            return lambda v: isinstance(v, str) and any(s in v.lower() for s in lowered)
        assert op == "glob"
        regex = re.compile("|".join(f"(?:{fnmatch.translate(s)})" for s in strs))
        match = regex.match
        return lambda v: isinstance(v, str) and match(v) is not None


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _nonzero(v: Any) -> bool:
    return bool(v)


def _masked(get: Callable[[Mapping[str, Any]], Any], mask: int, is_list: bool) -> Callable[[Mapping[str, Any]], Any]:
    if is_list:
        return lambda ev: [x & mask for x in get(ev) if type(x) is int]
    return lambda ev: (x & mask) if type(x := get(ev)) is int else None


def _lift(get: Callable[[Mapping[str, Any]], Any], is_list: bool, test: Callable[[Any], bool]) -> Predicate:
    if is_list:
        def any_element(ev: Mapping[str, Any]) -> bool:
            return any(test(x) for x in get(ev))
        return any_element

    def scalar(ev: Mapping[str, Any]) -> bool:
        v = get(ev)
        return v is not None and test(v)
    return scalar


def _negated(pred: Predicate) -> Predicate:
    return lambda ev: not pred(ev)


def _scalar_exists(get: Callable[[Mapping[str, Any]], Any]) -> Predicate:
    return lambda ev: (v := get(ev)) is not None and v != "" and v != [] and v != {}


def _list_exists(get: Callable[[Mapping[str, Any]], Any]) -> Predicate:
    return lambda ev: any(x is not None and x != "" for x in get(ev))


def _all(preds: Sequence[Predicate]) -> Predicate:
    if len(preds) == 2:
        a, b = preds
        return lambda ev: a(ev) and b(ev)

    def every(ev: Mapping[str, Any]) -> bool:
        for p in preds:  # noqa: SIM110 (a plain loop is faster than all() over a generator)
            if not p(ev):
                return False
        return True
    return every


def _any(preds: Sequence[Predicate]) -> Predicate:
    if len(preds) == 2:
        a, b = preds
        return lambda ev: a(ev) or b(ev)

    def some(ev: Mapping[str, Any]) -> bool:
        for p in preds:  # noqa: SIM110 (a plain loop is faster than any() over a generator)
            if p(ev):
                return True
        return False
    return some


def _and_types(parts: Sequence[_Compiled]) -> frozenset[str] | None:
    known = [p.event_types for p in parts if p.event_types is not None]
    if not known:
        return None
    out = known[0]
    for k in known[1:]:
        out = out & k
    return out


def _or_types(parts: Sequence[_Compiled]) -> frozenset[str] | None:
    if any(p.event_types is None for p in parts):
        return None
    return frozenset().union(*(p.event_types for p in parts if p.event_types is not None))


def compile_condition(text: str, *, macros: Mapping[str, str] | None = None,
                      lists: Mapping[str, Sequence[str]] | None = None, where: str = "") -> Condition:
    """Compile one condition against optional macros and lists (convenience for tests and tools)."""
    defs = Definitions(dict(macros or {}), {k: [str(x) for x in v] for k, v in (lists or {}).items()})
    return defs.compile(text, where)
