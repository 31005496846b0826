"""`heron fim scan`: a quiet first run, changes as text or JSON lines, the summary, the tty progress line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from heron.schema.events import FileChange, from_json

HERON = [sys.executable, "-m", "heron.cli.main"]


def fim_scan(tmp_path: Path, watched: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HERON, "fim", "scan", "--state-dir", str(tmp_path / "state"), "--no-default-policy",
                           "--path", str(watched), *extra], capture_output=True, text=True, timeout=120)


def test_scan_text_then_json(tmp_path: Path) -> None:
    w = tmp_path / "watched"
    w.mkdir()
    (w / "conf").write_text("a = 1\n")
    (w / "old").write_text("bye\n")
    first = fim_scan(tmp_path, w)
    assert first.returncode == 0, first.stderr
    assert "fim scan done: 3 files in 1 roots, 2 hashed" in first.stdout
    assert "baseline recorded for 3 files" in first.stdout
    assert "changes: 0 (none)" in first.stdout

    (w / "conf").write_text("a = 2\n")
    (w / "old").unlink()
    (w / "new\nname").write_bytes(b"x")
    text = fim_scan(tmp_path, w)
    assert text.returncode == 0, text.stderr
    assert f"modify  {w}/conf  [{w}]" in text.stdout
    assert f"delete  {w}/old  [{w}]" in text.stdout
    assert f"create  {w}/new\\x0aname  [{w}]" in text.stdout  # a newline in a name cannot forge a line
    assert "changes: 3 (create 1, delete 1, modify 1)" in text.stdout
    assert "files/s" in text.stdout and "MB/s hashed" in text.stdout

    (w / "conf").chmod(0o600)
    js = fim_scan(tmp_path, w, "--json")
    assert js.returncode == 0, js.stderr
    events = [from_json(line) for line in js.stdout.splitlines()]
    assert len(events) == 1 and isinstance(events[0], FileChange)
    ev = events[0]
    assert (ev.action, ev.path, ev.source, ev.rule) == ("attrib", f"{w}/conf", "file.scan", str(w))
    assert json.loads(js.stdout)["new"]["mode"] & 0o777 == 0o600
    assert "changes: 1 (attrib 1)" in js.stderr  # the summary keeps stdout pure JSON


def test_corrupt_baseline_is_said(tmp_path: Path) -> None:
    w = tmp_path / "watched"
    w.mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "fim-cli-baseline.db").write_bytes(b"garbage" * 1000)
    r = fim_scan(tmp_path, w)
    assert r.returncode == 0
    assert "was unreadable" in r.stderr and "starting a new baseline" in r.stderr


def test_progress_line_on_a_tty(tmp_path: Path) -> None:
    w = tmp_path / "watched"
    w.mkdir()
    (w / "f").write_text("x\n")
    master, slave = os.openpty()
    try:
        r = subprocess.run([*HERON, "fim", "scan", "--state-dir", str(tmp_path / "state"), "--no-default-policy",
                            "--path", str(w)], stdout=subprocess.PIPE, stderr=slave, text=True, timeout=120)
        os.close(slave)
        slave = -1
        tty_out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed and drained
                break
            if not chunk:
                break
            tty_out += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert r.returncode == 0
    assert b"\r" in tty_out and b"files (" in tty_out and b"\x1b[K" in tty_out


def test_unusable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = subprocess.run([*HERON, "fim", "scan", "--state-dir", str(blocker / "sub"), "--no-default-policy",
                        "--path", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "cannot use state dir" in r.stderr and "Traceback" not in r.stderr


def test_the_cli_keeps_its_own_baseline(tmp_path: Path) -> None:
    w = tmp_path / "watched"
    w.mkdir()
    (w / "f").write_text("x\n")
    assert fim_scan(tmp_path, w).returncode == 0
    state = tmp_path / "state"
    assert (state / "fim-cli-baseline.db").exists() and not (state / "fim-baseline.db").exists()
    other = tmp_path / "elsewhere" / "b.db"
    r = fim_scan(tmp_path, w, "--baseline", str(other))
    assert r.returncode == 0 and other.exists() and "baseline recorded for 2 files" in r.stdout, r.stdout
    (w / "g").write_text("y\n")
    r = fim_scan(tmp_path, w, "--baseline", str(other))
    assert f"create  {w}/g" in r.stdout and not (state / "fim-baseline.db").exists()
