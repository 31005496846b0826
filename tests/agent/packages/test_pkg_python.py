"""Python distributions: a real venv with a fake dist-info, found through the process that runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pkgroot import make_root, stanza, write_list, write_status

from heron.agent.config import PackageConfig
from heron.agent.host import Host
from heron.agent.packages.dpkg import DpkgReader
from heron.agent.packages.inventory import Scope
from heron.agent.packages.python import normalize_name, parse_metadata
from heron.agent.sources.package.scan import PackageMonitor
from heron.schema.events import PackageActivity, PackageInventory


def fake_dist(site: Path, name: str, version: str, native: Path | None = None) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nLong: text\n")
    rows = [f"{name.lower().replace('-', '_')}/__init__.py,sha256=x,10", f"{info.name}/METADATA,,"]
    if native is not None:
        rows.append(f"{native.relative_to(site)},sha256=y,1234")
    rows.append("../../../bin/fake-tool,,")
    (info / "RECORD").write_text("\n".join(rows) + "\n")


@pytest.fixture
def venv(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(venv dir, its site-packages, a native library inside a fake distribution)."""
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=60)
    site = next(env.glob("lib/python3*/site-packages"))
    pkg = site / "fake_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    native = pkg / "_native.so"
    shutil.copy(os.path.realpath("/usr/lib/x86_64-linux-gnu/libz.so.1"), native)
    fake_dist(site, "Fake_Pkg", "1.2.3", native)
    fake_dist(site, "other.dist", "0.1")
    yield env, site, native


def test_metadata_and_names() -> None:
    assert parse_metadata("Metadata-Version: 2.1\nName: PyYAML\nVersion: 6.0.1\nSummary: x\n\nName: body\n") == (
        "PyYAML", "6.0.1")
    assert normalize_name("Zope.Interface__x") == "zope-interface-x"


def test_os_packaged_distributions_are_left_to_the_os(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    site = root / "usr/lib/python3/dist-packages"
    fake_dist(site, "PyYAML", "6.0")
    fake_dist(site, "pipinstalled", "1.0")
    write_status(root, [stanza("python3-yaml", "6.0-3")])
    write_list(root, "python3-yaml", ["/usr/lib/python3/dist-packages/PyYAML-6.0.dist-info/METADATA"])
    (root / "usr/local/lib/python3.11/site-packages").mkdir(parents=True)
    fake_dist(root / "usr/local/lib/python3.11/site-packages", "requests", "2.31.0")
    scope = Scope("test", str(root), os_readers=[DpkgReader()])
    pkgs = sorted((p.manager, p.name) for p in scope.load())
    assert pkgs == [("dpkg", "python3-yaml"), ("python", "pipinstalled"), ("python", "requests")]
    req = next(p for p in scope.packages() if p.name == "requests")
    assert req.purl == "pkg:pypi/requests@2.31.0" and req.ecosystem == "PyPI"
    assert req.location == "/usr/local/lib/python3.11/site-packages/requests-2.31.0.dist-info"


@pytest.mark.privileged
def test_venv_of_a_running_process_is_found_and_its_native_module_is_active(
        host: Host, venv: tuple[Path, Path, Path]) -> None:
    env, site, native = venv
    mon = PackageMonitor(host, PackageConfig(containers=False), scope_filter=lambda n: n == "host",
                         rescan_per_cycle=0)
    proc = None
    try:
        start = mon.start()
        assert not any(p.name == "fake-pkg" for e in start if isinstance(e, PackageInventory) for p in e.added)
        code = "import ctypes, sys, time; ctypes.CDLL(sys.argv[1]); print('ok', flush=True); time.sleep(60)"
        # argv[0] is the venv's python (a symlink: /proc/PID/exe names the base interpreter)
        proc = subprocess.Popen([str(env / "bin/python"), "-c", code, str(native)], stdout=subprocess.PIPE,
                                text=True, cwd="/")
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ok"
        events = mon.cycle()
        added = [p for e in events if isinstance(e, PackageInventory) for p in e.added]
        names = {p.name: p for p in added}
        assert {"fake-pkg", "other-dist"} <= set(names)
        fake = names["fake-pkg"]
        assert fake.purl == "pkg:pypi/fake-pkg@1.2.3" and fake.manager == "python"
        assert fake.location == f"{os.path.realpath(site)}/Fake_Pkg-1.2.3.dist-info"
        assert fake.purl in mon.packages_of(proc.pid)
        assert names["other-dist"].purl not in mon.packages_of(proc.pid)  # pure Python: not visible
        active = {u.purl: u for e in events if isinstance(e, PackageActivity) for u in e.active}
        assert fake.purl in active
        assert active[fake.purl].processes[0].pid == proc.pid
        assert active[fake.purl].files == [os.path.realpath(native)]
        proc.kill()
        proc.wait()
        inactive = [p for e in mon.cycle() if isinstance(e, PackageActivity) for p in e.inactive]
        assert fake.purl in inactive
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        mon.close()
