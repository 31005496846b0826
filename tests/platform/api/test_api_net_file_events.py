"""Network and file events through ingest and the events API: indexed columns, endpoint classes."""

from __future__ import annotations

import time

from platform_helpers import EnrolledAgent, Platform, batch_body, exec_event, ingest

from heron.schema.events import Event, FileChange, NetFlow, NetListen, ProcessRef

BOTH_BACKENDS = True  # the platform fixture's tests run on SQLite and PostgreSQL (conftest.py)

CID = "c" * 64


def flow(remote: str, pid: int = 10, container: str | None = None, local: str = "10.0.0.5") -> NetFlow:
    return NetFlow(ts=time.time_ns(), source="network.test",
                   process=ProcessRef(key=f"k-{pid}", pid=pid, exe="/usr/bin/curl", container_id=container),
                   direction="out", protocol="tcp", local_addr=local, remote_addr=remote, remote_port=443,
                   domain="example.com", connections=1, bytes_out=10, bytes_in=20)


def events(platform: Platform, etype: str, **params: str) -> list[dict[str, object]]:
    r = platform.client.get("/api/v1/events", params={"type": etype, **params}, headers=platform.admin)
    assert r.status_code == 200, r.text
    out: list[dict[str, object]] = r.json()["events"]
    return out


def test_flows_get_remote_class_including_same_host_containers(platform: Platform, agent: EnrolledAgent) -> None:
    batch: list[Event] = [
        flow("127.0.0.1"), flow("192.168.1.9"), flow("93.184.216.34"), flow("fe80::1"),
        flow("172.17.0.1", pid=20, container=CID, local="172.17.0.2"),  # a container's own flow...
        flow("172.17.0.2", pid=30),  # ...teaches that 172.17.0.2 is a container on this host
    ]
    status, _ = ingest(platform, agent, batch_body(batch))
    assert status == 200
    got = {(e["event"]["remote_addr"], e["event"]["process"]["pid"]): e["event"]["remote_class"]  # type: ignore[index]
           for e in events(platform, "net.flow")}
    assert got == {("127.0.0.1", 10): "loopback", ("192.168.1.9", 10): "private", ("93.184.216.34", 10): "public",
                   ("fe80::1", 10): "link_local", ("172.17.0.1", 20): "private", ("172.17.0.2", 30): "container"}


def test_file_and_listen_events_are_searchable(platform: Platform, agent: EnrolledAgent) -> None:
    batch: list[Event] = [
        exec_event(40, "/usr/bin/vi", ["vi", "/etc/hosts"]),
        FileChange(ts=time.time_ns(), path="/etc/hosts", action="modify",
                   process=ProcessRef(key="k-40", pid=40, exe="/usr/bin/vi", user="root")),
        NetListen(ts=time.time_ns(), process=ProcessRef(pid=41, exe="/usr/sbin/sshd"), protocol="tcp",
                  addr="0.0.0.0", port=22),
    ]
    assert ingest(platform, agent, batch_body(batch))[0] == 200
    files = events(platform, "file.change")
    assert [e["event"]["path"] for e in files] == ["/etc/hosts"]  # type: ignore[index]
    assert files[0]["event"]["process"]["exe"] == "/usr/bin/vi"  # type: ignore[index]
    found = events(platform, "file.change", exe="/usr/bin/vi")
    assert len(found) == 1
    listens = events(platform, "net.listen")
    assert listens[0]["event"]["port"] == 22  # type: ignore[index]
