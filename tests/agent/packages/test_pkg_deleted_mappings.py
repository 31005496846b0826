"""A service still running pre-upgrade code (" (deleted)" mappings) is never credited to the new version."""

from __future__ import annotations

from pathlib import Path

from pkgroot import make_root, stanza, write_list, write_status

from heron.agent.packages.activity import ProcInfo, Usage, owned_files
from heron.agent.packages.dpkg import DpkgReader
from heron.agent.packages.inventory import Scope
from heron.schema.events import ProcessRef


def _proc(key: str, files: tuple[str, ...]) -> ProcInfo:
    return ProcInfo(pid=10, key=key, comm="svc", exe=files[0], cgroup="/", files=files)


def test_deleted_mapping_keeps_the_old_version_active(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write_status(root, [stanza("svc", "1.0"), stanza("libfoo1", "1.0", source="foo")])
    write_list(root, "svc", ["/usr/bin/svc"])
    write_list(root, "libfoo1", ["/usr/lib/libfoo.so.1"])
    scope = Scope("test", str(root), languages=False, os_readers=[DpkgReader()])
    try:
        old = {p.name: p.purl for p in scope.load()}
        usage = Usage()
        ref = ProcessRef(key="k1", pid=10)
        running = _proc("k1", ("/usr/bin/svc", "/usr/lib/libfoo.so.1"))
        usage.record(ref, owned_files(running, scope.owner, usage.of("k1")), 1)
        assert set(usage.active()) == {old["svc"], old["libfoo1"]}

        # upgrade libfoo1 to 1.1: the running service now maps the replaced (deleted) file
        write_status(root, [stanza("svc", "1.0"), stanza("libfoo1", "1.1", source="foo")])
        scope.check()
        new = {p.name: p.purl for p in scope.packages()}
        assert new["libfoo1"] != old["libfoo1"]
        after = _proc("k1", ("/usr/bin/svc", "/usr/lib/libfoo.so.1 (deleted)"))
        owned = owned_files(after, scope.owner, usage.of("k1"))
        assert owned == {old["svc"]: ["/usr/bin/svc"], old["libfoo1"]: ["/usr/lib/libfoo.so.1 (deleted)"]}
        usage.record(ref, owned, 2)
        assert new["libfoo1"] not in usage.active() and old["libfoo1"] in usage.active()

        # a process first seen after the upgrade: the old version is unknown, the new one never credited
        owned = owned_files(_proc("k2", after.files), scope.owner, usage.of("k2"))
        assert owned == {old["svc"]: ["/usr/bin/svc"]}
        # a process that starts after the upgrade maps the new file: the new version
        fresh = _proc("k3", ("/usr/bin/svc", "/usr/lib/libfoo.so.1"))
        assert new["libfoo1"] in owned_files(fresh, scope.owner, usage.of("k3"))
    finally:
        scope.close()
