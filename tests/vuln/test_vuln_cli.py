"""``heron vulndb import|update`` and ``heron vulns --json`` against a platform started here."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zstandard

from heron.cli.main import main
from heron.platform.packages import PackageStore
from heron.platform.server import ServerHandle, open_data_dir, start_in_thread
from heron.schema.events import NetListen, PackageActivity, PackageInventory, PackageUse, ProcessRef, encode_events
from heron.vuln.db import AdvisoryDB, vulndb_path
from vulnfixtures import EXPECTED, packages, write_advisories


def _zip(records_dir: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(records_dir.glob("*.json")):
            z.write(f, f.name)
    return dest


def test_vulndb_import_directory_and_zip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = write_advisories(tmp_path / "osv")
    data = tmp_path / "data"
    assert main(["vulndb", "import", str(tmp_path / "osv"), "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert f"{len(records)} records in {len(records)} files: {len(records)} added" in out
    assert (data / "platform" / "vulndb.sqlite").exists()
    assert oct((data / "platform").stat().st_mode & 0o777) == "0o700"
    # The same records zipped: nothing new.
    assert main(["vulndb", "import", str(_zip(tmp_path / "osv", tmp_path / "all.zip")), "--data-dir", str(data)]) == 0
    assert f"0 added, 0 updated, {len(records)} unchanged, 0 malformed" in capsys.readouterr().out


def test_vulndb_import_missing_path_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vulndb", "import", str(tmp_path / "nope"), "--data-dir", str(tmp_path)]) == 1
    assert "no such file or directory" in capsys.readouterr().err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_vulndb_update_failure_names_url_and_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mirror = f"http://127.0.0.1:{_closed_port()}"
    rc = main(["vulndb", "update", "--ecosystem", "Rocky Linux", "--mirror", mirror, "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"cannot download {mirror}/Rocky%20Linux/all.zip: " in err and "refused" in err.lower()
    assert not list((tmp_path / "platform").glob(".osv-*"))  # the partial download is gone


def test_vulndb_update_without_inventory_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vulndb", "update", "--data-dir", str(tmp_path)]) == 1
    assert "--ecosystem" in capsys.readouterr().err


@pytest.fixture
def zip_server(tmp_path: Path) -> Iterator[str]:
    """A loopback HTTP server holding <ECOSYSTEM>/all.zip files (osv.dev's layout)."""
    root = tmp_path / "mirror"
    write_advisories(tmp_path / "osv")
    (root / "Debian").mkdir(parents=True)
    _zip(tmp_path / "osv", root / "Debian" / "all.zip")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_vulndb_update_from_a_mirror(tmp_path: Path, zip_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    rc = main(["vulndb", "update", "--ecosystem", "Debian", "--ecosystem", "npm", "--mirror", zip_server,
               "--data-dir", str(data)])
    captured = capsys.readouterr()
    assert rc == 1  # npm is missing on the mirror: reported, the rest imported
    assert f"cannot download {zip_server}/npm/all.zip: HTTP 404" in captured.err
    assert "Debian" in captured.out and "11 added" in captured.out
    assert AdvisoryDB(vulndb_path(data / "platform")).counts()["advisories"] == 11


# -- heron vulns against a real platform ------------------------------------------------------------
@pytest.fixture
def platform(tmp_path: Path) -> Iterator[ServerHandle]:
    handle = start_in_thread("127.0.0.1", 0, tmp_path / "data" / "platform")
    yield handle
    handle.stop()


def _ingest_inventory(handle: ServerHandle) -> None:
    now = time.time_ns()
    facts = {"hostname": "web-1", "machine_id": "m" * 32, "boot_id": "b" * 32, "kernel": "6.18", "distro": "debian:12",
             "arch": "x86_64"}
    r = httpx.post(f"{handle.url}/api/v1/enroll", json={"host": facts},
                   headers={"Authorization": f"Bearer {handle.credentials.enrollment_token}"})
    assert r.status_code == 201, r.text
    agent = r.json()
    pkgs = {p.name: p for p in packages()}
    proc = ProcessRef(key="bbbbbbbb-100-1000", pid=100, exe="/usr/sbin/nginx")
    events = [PackageInventory(ts=now, scope="host", full=True, added=list(pkgs.values())),
              PackageActivity(ts=now, scope="host", full=True,
                              active=[PackageUse(purl=pkgs["libssl3"].purl, processes=[proc])]),
              NetListen(ts=now, process=proc, protocol="tcp", addr="::", port=443)]
    body = zstandard.ZstdCompressor().compress(encode_events(events))
    r = httpx.post(f"{handle.url}/api/v1/ingest", content=body, headers={
        "Authorization": f"Bearer {agent['token']}", "X-Heron-Agent": agent["agent_id"], "X-Heron-Batch": "b-1",
        "Content-Type": "application/x-msgpack", "Content-Encoding": "zstd"})
    assert r.status_code == 200, r.text


def test_heron_vulns_json(tmp_path: Path, platform: ServerHandle, capsys: pytest.CaptureFixture[str]) -> None:
    _ingest_inventory(platform)
    write_advisories(tmp_path / "osv")
    data = tmp_path / "data"
    assert main(["vulndb", "import", str(tmp_path / "osv"), "--data-dir", str(data)]) == 0  # while it runs
    capsys.readouterr()
    assert main(["vulns", "--json", "--url", platform.url, "--data-dir", str(data)]) == 0
    findings = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(f["id"], f["package"]): (f["status"], f["fixed_version"]) for f in findings} == EXPECTED
    top = findings[0]
    assert (top["id"], top["active"], top["exposed"], top["host"], top["scope"]) == ("DSA-NEW", True, True,
                                                                                      "web-1", "host")
    for key in ("aliases", "version", "ecosystem", "purl", "severity", "score"):
        assert key in top
    assert all(not f["active"] for f in findings[1:])
    # The text form, one line per finding, and the filters.
    assert main(["vulns", "--url", platform.url, "--data-dir", str(data), "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[2] == "DSA-NEW" and "ACTIVE EXPOSED [::]:443/tcp" in lines[0]
    assert lines[-1].startswith("2 of 6 findings")
    assert main(["vulns", "--json", "--url", platform.url, "--data-dir", str(data), "--host", "other"]) == 0
    assert capsys.readouterr().out == ""


def test_heron_vulns_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["vulns", "--url", url, "--token", "t"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_vulndb_update_takes_the_ecosystems_of_the_inventories(tmp_path: Path, zip_server: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    storage, _ = open_data_dir(data / "platform")
    PackageStore(storage.db).apply("agent-1", [
        PackageInventory(ts=time.time_ns(), scope="host", full=True, added=packages())])
    storage.close()
    assert main(["vulndb", "update", "--mirror", zip_server, "--data-dir", str(data)]) == 1
    captured = capsys.readouterr()
    assert "Debian" in captured.out and "11 added" in captured.out
    for missing in ("PyPI", "npm"):
        assert f"{zip_server}/{missing}/all.zip: HTTP 404" in captured.err


def test_heron_vulns_warns_about_uncovered_ecosystems(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import io

    import heron.platform.client as client
    from heron.vuln.commands import vulns_command
    body = {"findings": [], "total": 0, "advisories": 5, "stats": {"packages": 812}, "uncovered": {"Debian:13": 812}}
    monkeypatch.setattr(client, "_get", lambda *a, **k: body)
    out = io.StringIO()
    assert vulns_command("http://127.0.0.1:1", "t", False, out) == 0
    assert "warning: no advisories imported for Debian:13 (812 packages): not checked" in out.getvalue()
    out = io.StringIO()
    assert vulns_command("http://127.0.0.1:1", "t", True, out) == 0
    assert out.getvalue() == "" and "Debian:13 (812 packages)" in capsys.readouterr().err
