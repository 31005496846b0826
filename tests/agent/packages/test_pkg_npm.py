"""npm: a node_modules tree made here, found through a running "node" process's working directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from heron.agent.config import PackageConfig
from heron.agent.host import Host
from heron.agent.packages import ScopeEnv, os_info
from heron.agent.packages.npm import NpmReader, process_trees
from heron.agent.packages.rootfs import RootFS
from heron.agent.sources.package.scan import PackageMonitor
from heron.schema.events import PackageInventory


def pkg(d: Path, name: str, version: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "package.json").write_text(json.dumps({"name": name, "version": version, "dependencies": {}}))
    return d


def app_tree(base: Path) -> Path:
    app = base / "app"
    pkg(app, "my-app", "1.0.0")
    nm = app / "node_modules"
    pkg(nm / "left-pad", "left-pad", "1.3.0")
    pkg(nm / "@scope/util", "@scope/util", "2.0.0")
    pkg(nm / "@scope/util/node_modules/left-pad", "left-pad", "1.1.0")  # nested, another version
    pkg(nm / ".pnpm/lodash@4.17.21/node_modules/lodash", "lodash", "4.17.21")
    os.symlink(".pnpm/lodash@4.17.21/node_modules/lodash", nm / "lodash")  # pnpm link: not walked twice
    native = pkg(nm / "native-addon", "native-addon", "0.5.0")
    (native / "build/Release").mkdir(parents=True)
    (native / "build/Release/addon.node").write_bytes(b"\x7fELF")
    (nm / "broken").mkdir()
    (nm / "broken/package.json").write_text("{not json")
    (nm / "deep").mkdir()
    (nm / "deep/package.json").write_text("[" * 100_000 + "]" * 100_000)  # RecursionError, not a crash
    (nm / ".package-lock.json").write_text("{}")
    (app / "src").mkdir()
    return app


def test_tree_walk(tmp_path: Path) -> None:
    app = app_tree(tmp_path)
    fs = RootFS("/")
    read = NpmReader(str(app / "node_modules")).read(ScopeEnv(fs, os_info(fs), lambda p: p))
    got = sorted((p.name, p.version) for p in read.packages)
    assert got == [("@scope/util", "2.0.0"), ("left-pad", "1.1.0"), ("left-pad", "1.3.0"), ("lodash", "4.17.21"),
                   ("native-addon", "0.5.0")]
    util = next(p for p in read.packages if p.name == "@scope/util")
    assert util.purl == "pkg:npm/%40scope/util@2.0.0" and util.ecosystem == "npm" and util.manager == "npm"
    assert read.owners is not None
    addon = str(app / "node_modules/native-addon/build/Release/addon.node")
    assert read.packages[read.owners.owner(addon)].name == "native-addon"  # type: ignore[index]
    nested = str(app / "node_modules/@scope/util/node_modules/left-pad/index.js")
    assert read.packages[read.owners.owner(nested)].version == "1.1.0"  # type: ignore[index]
    assert read.owners.owner(str(app / "src/index.js")) is None


def test_process_trees_walk_up_from_cwd_and_script(tmp_path: Path) -> None:
    app = app_tree(tmp_path)
    fs = RootFS("/")
    nm = str(app / "node_modules")
    assert process_trees(fs, ["node", "--inspect", "src/server.js"], str(app), []) == [nm]
    assert process_trees(fs, ["node"], str(app / "src"), []) == [nm]
    assert process_trees(fs, ["node", str(app / "src/x.js")], "/", []) == [nm]


@pytest.mark.privileged
@pytest.mark.parametrize("kind", ["fake", "real"])
def test_node_process_tree_is_inventoried(host: Host, tmp_path: Path, kind: str) -> None:
    app = app_tree(tmp_path)
    if kind == "fake":  # a copy of sleep named node: the discovery only looks at the name, argv and cwd
        node = tmp_path / "bin/node"
        node.parent.mkdir()
        shutil.copy("/bin/sleep", node)
        argv = [str(node), "60"]
    else:
        real = shutil.which("node")
        if real is None:
            pytest.skip("node is not installed")
        argv = [real, "-e", "setInterval(() => {}, 1000)"]
    mon = PackageMonitor(host, PackageConfig(containers=False), scope_filter=lambda n: n == "host",
                         rescan_per_cycle=0)
    proc = None
    try:
        mon.start()
        proc = subprocess.Popen(argv, cwd=app / "src")
        time.sleep(0.2)
        events = mon.cycle()
        added = {(p.name, p.version, p.location) for e in events if isinstance(e, PackageInventory) for p in e.added
                 if p.manager == "npm"}
        real_nm = os.path.realpath(app / "node_modules")
        assert ("left-pad", "1.3.0", f"{real_nm}/left-pad") in added
        assert ("@scope/util", "2.0.0", f"{real_nm}/@scope/util") in added
        assert len(added) == 5
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        mon.close()
