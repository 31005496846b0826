"""The package source end to end: its thread, its events, a real container as a scope, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from collect import Collector
from containers import DockerDaemon, docker_daemon, static_busybox  # noqa: F401  (pytest fixture)
from heron.agent.config import PackageConfig
from heron.agent.health import Health
from heron.agent.host import Host
from heron.agent.sources.base import SourceContext
from heron.agent.sources.package.scan import PackageSource, local_report
from heron.agent.sources.registry import LADDERS
from heron.cli.main import main as cli_main
from heron.schema.events import Event, PackageActivity, PackageInventory, decode_events, encode_events

pytestmark = pytest.mark.privileged
PKG_IMAGE = "heron-test-pkg:latest"


def is_inv(scope: str, full: bool | None = None) -> object:
    return lambda e: isinstance(e, PackageInventory) and e.scope == scope and (full is None or e.full == full)


def is_act(scope: str) -> object:
    return lambda e: isinstance(e, PackageActivity) and e.scope == scope


class Running:
    def __init__(self, host: Host, config: PackageConfig) -> None:
        self.collector = Collector()
        self.health = Health()
        self.source = PackageSource(SourceContext(host, self.health, self.collector, {"config": config}))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.source.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Running:
        assert self.source.snapshot() == []
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def activity(self, purl: str, active: bool, scope: str = "host", timeout: float = 10) -> list[Event]:
        def match(e: Event) -> bool:
            if not isinstance(e, PackageActivity) or e.scope != scope:
                return False
            return any(u.purl == purl for u in e.active) if active else purl in e.inactive
        return self.collector.wait_for(match, timeout=timeout)


def test_registered_and_probes(host: Host) -> None:
    assert PackageSource in LADDERS["package"]
    assert PackageSource.probe(host).ok


def test_source_reports_inventory_activity_and_stops(host: Host) -> None:
    cfg = PackageConfig(activity_interval_s=0.3, check_interval_s=0.2, containers=False)
    with Running(host, cfg) as r:
        full = r.collector.wait_for(is_inv("host", full=True))
        assert full, "no full inventory"
        inv = full[0]
        assert isinstance(inv, PackageInventory) and inv.distro == "debian:12" and inv.source == "package.procfs"
        libc = next(p for p in inv.added if p.name == "libc6")
        acts = r.collector.wait_for(is_act("host"))
        assert acts and isinstance(acts[0], PackageActivity) and acts[0].full
        assert any(u.purl == libc.purl for u in acts[0].active)
        # a process started now: its interpreter's package turns active within a cycle or two
        python = "/usr/bin/python3.11"
        if not os.path.exists(python):
            pytest.skip("no /usr/bin/python3.11")
        interp = next(p for p in inv.added if p.name == "python3.11-minimal")
        already = any(u.purl == interp.purl for u in acts[0].active)
        proc = subprocess.Popen([python, "-c", "import time; time.sleep(60)"])
        try:
            if not already:
                assert r.activity(interp.purl, active=True)
        finally:
            proc.kill()
            proc.wait()
        if not already:
            assert r.activity(interp.purl, active=False)
        # everything it emits survives the wire encoding
        with r.collector.lock:
            events = list(r.collector.events)
        assert len(decode_events(encode_events(events))) == len(events)
        assert r.health.get("package.procfs.scopes") == 1


# -- a real container with a dpkg database ---------------------------------------------------------
def _pkg_rootfs_tar() -> bytes:
    """A Debian-looking root: merged /usr, busybox owned by a dpkg package, a dormant doc package."""
    with tempfile.TemporaryDirectory(prefix="heron-pkg-rootfs-") as root:
        for d in ("usr/bin", "usr/lib", "etc", "tmp", "var/lib/dpkg/info", "var/lib/dpkg/updates"):
            os.makedirs(f"{root}/{d}")
        os.symlink("usr/bin", f"{root}/bin")
        os.symlink("usr/lib", f"{root}/lib")
        shutil.copy2(static_busybox(), f"{root}/usr/bin/busybox")
        for applet in ("sh", "sleep"):
            os.symlink("busybox", f"{root}/usr/bin/{applet}")
        with open(f"{root}/etc/os-release", "w") as f:
            f.write('ID=debian\nVERSION_ID="12"\n')
        with open(f"{root}/var/lib/dpkg/status", "w") as f:
            f.write("Package: busybox-static\nStatus: install ok installed\nArchitecture: amd64\n"
                    "Source: busybox\nVersion: 1:1.35.0-4+b1\n\n"
                    "Package: fake-doc\nStatus: install ok installed\nArchitecture: all\nVersion: 1.0\n")
        with open(f"{root}/var/lib/dpkg/info/busybox-static.list", "w") as f:
            f.write("/.\n/bin\n/bin/busybox\n")  # dpkg names the /bin path; the kernel says /usr/bin
        with open(f"{root}/var/lib/dpkg/info/fake-doc.list", "w") as f:
            f.write("/.\n/usr/share/doc/fake-doc/README\n")
        return subprocess.run(["tar", "-C", root, "-c", "."], capture_output=True, check=True).stdout


@pytest.fixture
def pkg_container(docker_daemon: DockerDaemon) -> Iterator[tuple[str, int]]:  # noqa: F811
    d = docker_daemon
    if d.cli("image", "inspect", PKG_IMAGE, check=False).returncode != 0:
        subprocess.run([d.docker, "import", "-", PKG_IMAGE], input=_pkg_rootfs_tar(), capture_output=True,
                       check=True, timeout=60, env=dict(os.environ, DOCKER_HOST=d.host))
    name = f"heron-test-{uuid.uuid4().hex[:12]}"
    try:
        cid = d.cli("run", "-d", "--network", "none", "--name", name, PKG_IMAGE, "/bin/sleep", "600").stdout.strip()
        pid = int(d.cli("inspect", "--format", "{{.State.Pid}}", cid).stdout)
        yield cid, pid
    finally:
        d.cli("rm", "-f", name, check=False)


def test_container_scope_inventory_activity_and_exit(host: Host, pkg_container: tuple[str, int],
                                                     docker_daemon: DockerDaemon) -> None:  # noqa: F811
    cid, _pid = pkg_container
    cfg = PackageConfig(activity_interval_s=0.3, check_interval_s=0.2, languages=False)
    with Running(host, cfg) as r:
        invs = r.collector.wait_for(is_inv(cid, full=True))
        assert invs, "no inventory for the container"
        inv = invs[0]
        assert isinstance(inv, PackageInventory)
        assert inv.container_id == cid and inv.distro == "debian:12" and inv.errors == []
        pkgs = {p.name: p for p in inv.added}
        assert set(pkgs) == {"busybox-static", "fake-doc"}
        bb = pkgs["busybox-static"]
        assert (bb.version, bb.source_name, bb.source_version) == ("1:1.35.0-4+b1", "busybox", "1:1.35.0-4+b1")
        acts = r.collector.wait_for(is_act(cid))
        assert acts
        act = acts[0]
        assert isinstance(act, PackageActivity) and act.full and act.container_id == cid
        assert [u.purl for u in act.active] == [bb.purl]  # fake-doc stays dormant
        use = act.active[0]
        assert use.files == ["/usr/bin/busybox"] and use.processes[0].container_id == cid
        assert use.processes[0].exe == "/usr/bin/busybox"
        # a package installed in the running container: an inventory diff
        docker_daemon.cli("exec", cid, "sh", "-c",
                          "printf '\\nPackage: added\\nStatus: install ok installed\\nArchitecture: all\\n"
                          "Version: 2.0\\n\\n' >> /var/lib/dpkg/status")
        diff = r.collector.wait_for(lambda e: isinstance(e, PackageInventory) and e.scope == cid and not e.full
                                    and any(p.name == "added" for p in e.added))
        assert diff and not diff[0].removed  # type: ignore[attr-defined]
        # the container exits: its packages go inactive and the scope is no longer reported
        docker_daemon.cli("rm", "-f", cid)
        assert r.activity(bb.purl, active=False, scope=cid)
        deadline = time.monotonic() + 5
        mon = r.source.monitor
        while mon is not None and cid in mon.scopes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mon is not None and cid not in mon.scopes
        assert r.health.get("package.procfs.scopes_gone") == 1


def test_cli_json_for_a_container(pkg_container: tuple[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    cid, _ = pkg_container
    assert cli_main(["packages", "--json", "--container", cid[:12]]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"busybox-static", "fake-doc"}
    bb = by_name["busybox-static"]
    assert bb["active"] is True and bb["scope"] == cid and bb["manager"] == "dpkg" and bb["ecosystem"] == "Debian"
    assert bb["purl"].startswith("pkg:deb/debian/busybox-static@1:1.35.0-4%2Bb1?arch=amd64")
    assert by_name["fake-doc"]["active"] is False
    assert cli_main(["packages", "--container", "0" * 12]) == 1


def test_cli_host_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["packages", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    required = {"name", "version", "ecosystem", "purl", "manager", "active", "scope"}
    assert rows and all(required <= set(r) for r in rows)
    assert all(r["scope"] == "host" for r in rows)
    libc = next(r for r in rows if r["name"] == "libc6")
    assert libc["active"] is True  # the CLI's own process maps it
    facts, report = local_report()
    assert facts["scope"] == "host" and len(report) >= len([r for r in rows if r["manager"] == "dpkg"])
    assert cli_main(["packages"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "VERSION", "ECOSYSTEM", "MANAGER", "ACTIVE"]
    assert out[-1].startswith(f"{len(out) - 2} packages, ") and "active, in host (debian:12)" in out[-1]
    assert sys.executable  # the pyenv interpreter running this test is not a dpkg package
