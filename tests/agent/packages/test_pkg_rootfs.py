"""RootFS: a scope's files stay inside its root, and hostile files cannot block or flood a read."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from heron.agent.packages.rootfs import NotRegular, RootFS, TooBig


@pytest.fixture(params=[True, False], ids=["openat2", "fallback"])
def use_openat2(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def hostile_root(tmp_path: Path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/secret").write_text("container file")
    (root / "var/lib").mkdir(parents=True)
    # Absolute and climbing symlinks: inside the root they must resolve inside the root.
    os.symlink(str(outside), root / "var/lib/abs")  # /tmp/.../outside: absent inside the root
    os.symlink("/etc", root / "var/lib/dpkg")
    os.symlink("../../../../../../../../etc/secret", root / "var/lib/climb")
    os.mkfifo(root / "var/lib/fifo")
    return root, outside


def test_symlinks_resolve_inside_the_root(tmp_path: Path, use_openat2: bool) -> None:
    root, outside = hostile_root(tmp_path)
    assert (outside / "secret").exists()
    fs = RootFS(str(root), use_openat2=use_openat2)
    assert fs.read_text("/var/lib/dpkg/secret") == "container file"
    assert fs.read_text("/var/lib/climb") == "container file"
    with pytest.raises(FileNotFoundError):
        fs.read("/var/lib/abs/secret")  # the host path does not exist inside the root
    assert fs.resolve("/var/lib/dpkg/secret") == "/etc/secret"
    assert fs.resolve("/var/lib/climb") == "/etc/secret"
    assert fs.readlink("/var/lib/dpkg") == "/etc"
    fs.close()


def test_fifo_and_devices_are_not_read(tmp_path: Path, use_openat2: bool) -> None:
    root, _ = hostile_root(tmp_path)
    os.symlink("/dev/zero", root / "var/lib/zero")
    fs = RootFS(str(root), use_openat2=use_openat2)
    t0 = time.monotonic()
    with pytest.raises(NotRegular):
        fs.read("/var/lib/fifo")  # no writer: a blocking open would hang forever
    assert time.monotonic() - t0 < 1
    with pytest.raises(OSError):  # /dev/zero is not in the root
        fs.read("/var/lib/zero")
    fs.close()


def test_size_bound(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 10_000)
    fs = RootFS(str(tmp_path))
    with pytest.raises(TooBig):
        fs.read("/big", max_bytes=1000)
    assert len(fs.read("/big", max_bytes=10_000)) == 10_000


def test_symlink_loop(tmp_path: Path, use_openat2: bool) -> None:
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    fs = RootFS(str(tmp_path), use_openat2=use_openat2)
    with pytest.raises(OSError):
        fs.read("/a")
    with pytest.raises(OSError):
        fs.resolve("/a")
