"""bpf/net.bpf.c and its loader: the Python mirror matches the object's BTF and the header's
constants, every program loads on this kernel, the iterator and the batched map access work."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from heron.agent.ebpf import net_objects as nb
from heron.agent.ebpf.abi import Layout
from heron.agent.ebpf.build import INCLUDE_DIR, object_path

_TYPE_RE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_MEMBER_RE = re.compile(r"^\s+'([^']*)' type_id=(\d+) bits_offset=(\d+)")
SO_COOKIE = 57


def btf_structs() -> dict[str, tuple[int, list[tuple[str, int, int]]]]:
    """struct name -> (size, [(member, byte offset, byte size)]) from the object's BTF."""
    obj = object_path(nb.OBJECT)
    if obj is None or shutil.which("bpftool") is None:
        pytest.fail("net.bpf.o not built or bpftool missing: run python -m heron.agent.ebpf.build")
    text = subprocess.run(["bpftool", "btf", "dump", "file", str(obj), "format", "raw"],
                          capture_output=True, text=True, check=True).stdout
    types: dict[int, tuple[str, str, dict[str, str], list[tuple[str, int, int]]]] = {}
    current: tuple[str, str, dict[str, str], list[tuple[str, int, int]]] | None = None
    for line in text.splitlines():
        m = _TYPE_RE.match(line)
        if m:
            attrs = dict(kv.split("=", 1) for kv in m.group(4).split() if "=" in kv)
            current = (m.group(2), m.group(3), attrs, [])
            types[int(m.group(1))] = current
            continue
        mm = _MEMBER_RE.match(line)
        if mm and current is not None:
            current[3].append((mm.group(1), int(mm.group(2)), int(mm.group(3))))

    def size(tid: int) -> int:
        kind, _name, attrs, _members = types[tid]
        if kind in ("TYPEDEF", "CONST", "VOLATILE"):
            return size(int(attrs["type_id"]))
        if kind == "ARRAY":
            return int(attrs["nr_elems"]) * size(int(attrs["type_id"]))
        return int(attrs["size"])

    return {name: (int(attrs["size"]), [(n, bits // 8, size(t)) for n, t, bits in members])
            for kind, name, attrs, members in types.values() if kind == "STRUCT" and name.startswith("heron_net_")}


@pytest.mark.parametrize("layout", list(nb.LAYOUTS.values()), ids=list(nb.LAYOUTS))
def test_layout_matches_object_btf(layout: Layout) -> None:
    structs = btf_structs()
    assert layout.name in structs, f"struct {layout.name} not in the object's BTF"
    size, members = structs[layout.name]
    assert size == layout.fmt.size
    assert [(f.name, f.offset, f.size) for f in layout.fields] == members


def test_flat_decoders_cover_the_records() -> None:
    assert nb.FLOW_OPEN_FLAT.size == nb.FLOW_OPEN.fmt.size
    assert nb.FLOW_CLOSE_FLAT.size == nb.FLOW_CLOSE.fmt.size
    assert nb.SOCK_EVENT_FLAT.size == nb.SOCK_EVENT.fmt.size
    assert nb.DNS_FLAT.size + nb.DNS_MAX == nb.DNS.fmt.size
    assert nb.COUNTERS_FLAT.size == nb.COUNTERS_SIZE and nb.KEY_SIZE == 32
    assert nb.CLOSE_TOTALS_OFFSET + nb.CLOSE_TOTALS.size == nb.FLOW_CLOSE.fmt.size
    assert [f.offset for f in nb.FLOW_CLOSE.fields if f.name == "tcp_bytes_out"] == [nb.CLOSE_TOTALS_OFFSET]


def test_constants_match_the_header() -> None:
    header = (INCLUDE_DIR / "heron_net_abi.h").read_text()
    defines = dict(re.findall(r"^#define (HERON_NET_\w+) (0x[0-9a-f]+|\d+)", header, re.M))
    values = {k: int(v, 0) for k, v in defines.items()}
    mirror = {
        "HERON_NET_ABI_VERSION": nb.HERON_NET_ABI_VERSION, "HERON_NET_EV_FLOW_OPEN": nb.EV_FLOW_OPEN,
        "HERON_NET_EV_FLOW_CLOSE": nb.EV_FLOW_CLOSE, "HERON_NET_EV_RELEASE": nb.EV_RELEASE,
        "HERON_NET_EV_LISTEN": nb.EV_LISTEN, "HERON_NET_EV_OWNER": nb.EV_OWNER, "HERON_NET_EV_DNS": nb.EV_DNS,
        "HERON_NET_F_OUT": nb.F_OUT, "HERON_NET_F_IN": nb.F_IN, "HERON_NET_F_INHERITED": nb.F_INHERITED,
        "HERON_NET_F_LISTENER": nb.F_LISTENER, "HERON_NET_F_UDP_BOUND": nb.F_UDP_BOUND,
        "HERON_NET_F_SNAPSHOT": nb.F_SNAPSHOT, "HERON_NET_F_HAS_FLOW": nb.F_HAS_FLOW, "HERON_NET_R_IN": nb.R_IN,
        "HERON_NET_R_OPEN": nb.R_OPEN, "HERON_NET_R_NO_FLOW": nb.R_NO_FLOW, "HERON_NET_R_CUT": nb.R_CUT,
        "HERON_NET_R_TCP_TOTALS": nb.R_TCP_TOTALS, "HERON_NET_UDP_MAX_PEERS": nb.UDP_MAX_PEERS,
        "HERON_NET_STAT_LISTENERS_FULL": nb.STAT_LISTENERS_FULL,
        "HERON_NET_STAT_UDP_PEERS_FOLDED": nb.STAT_UDP_PEERS_FOLDED,
        "HERON_NET_STAT_LOST": nb.STAT_LOST, "HERON_NET_STAT_UNOWNED": nb.STAT_UNOWNED,
        "HERON_NET_STAT_FLOWS_FULL": nb.STAT_FLOWS_FULL, "HERON_NET_STAT_UNPARSED": nb.STAT_UNPARSED,
        "HERON_NET_STAT_NO_LISTENER": nb.STAT_NO_LISTENER, "HERON_NET_STAT_DNS": nb.STAT_DNS,
        "HERON_NET_STAT_COUNT": nb.STAT_COUNT, "HERON_NET_DNS_MAX": nb.DNS_MAX,
        "HERON_NET_DNS_PORTS_BYTES": nb.DNS_PORTS_BYTES,
    }
    assert values == mirror


def test_cgroup2_root_from_mounts(tmp_path: Path) -> None:
    hybrid = tmp_path / "mounts"
    hybrid.write_text("tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
                      "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    assert nb.cgroup2_root(str(hybrid)) == "/sys/fs/cgroup/unified"
    v1 = tmp_path / "v1"
    v1.write_text("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n")
    assert nb.cgroup2_root(str(v1)) is None
    assert nb.cgroup2_root(str(tmp_path / "missing")) is None


def test_dns_port_bitmap() -> None:
    bits = nb.dns_port_bitmap([53, 5353, 0, 70000, -1])
    assert len(bits) == nb.DNS_PORTS_BYTES
    on = {p for p in range(65536) if bits[p >> 3] & (1 << (p & 7))}
    assert on == {53, 5353}


def heron_net_progs() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out or "[]") if p.get("name", "").startswith("heron_n_")}


@pytest.mark.privileged
def test_every_program_loads_here_and_close_unloads() -> None:
    before = heron_net_progs()
    loaded = nb.load()
    try:
        assert loaded.refused == {}
        assert loaded.programs == [*nb.ESSENTIAL, nb.STATE_BTF, *nb.OPTIONAL]
        assert loaded.state_flavor == "tp_btf"
        mine = heron_net_progs() - before
        assert len(mine) == len(loaded.programs)
    finally:
        loaded.close()
    deadline = time.monotonic() + 5
    while mine & heron_net_progs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not mine & heron_net_progs()


@pytest.mark.privileged
def test_raw_tp_flavour_loads() -> None:
    loaded = nb.load(force_raw_tp=True)
    try:
        assert nb.STATE_RAW in loaded.programs and nb.STATE_BTF not in loaded.programs
        assert loaded.state_flavor == "raw_tp"
    finally:
        loaded.close()


@pytest.mark.privileged
def test_iterator_lists_this_process_sockets_with_their_cookies() -> None:
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.bind(("::1", 0))
    listener.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    loaded = nb.load()
    try:
        socks = {s.cookie: s for s in loaded.iterate_sockets()}
    finally:
        loaded.close()
    for sock, proto, state in ((listener, nb.PROTO_TCP, nb.TCP_LISTEN), (udp, nb.PROTO_UDP, nb.UDP_UNCONNECTED)):
        cookie = int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")
        s = socks[cookie]
        assert (s.tgid, s.proto, s.state, s.lport) == (os.getpid(), proto, state, sock.getsockname()[1])
        assert s.netns == os.stat("/proc/self/ns/net").st_ino
        assert s.start_boottime_ns > 0
    assert socks[int.from_bytes(listener.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")].laddr == (
        socket.inet_pton(socket.AF_INET6, "::1"))
    assert socks[int.from_bytes(udp.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")].laddr == (
        b"\0" * 10 + b"\xff\xff" + socket.inet_aton("127.0.0.1"))
    listener.close()
    udp.close()


@pytest.mark.privileged
def test_batched_read_and_delete_of_the_flow_map() -> None:
    loaded = nb.load()
    try:
        fd = loaded.fd(nb.FLOWS_MAP)
        keys = [nb.FLOW_KEY.fmt.pack(i, b"\1" * 16, i % 65536, 6, b"\0" * 5) for i in range(1, 10_001)]
        for i, key in enumerate(keys, 1):
            assert loaded.obj.map_update_fd(fd, key, nb.COUNTERS_FLAT.pack(i, 2 * i, 3, 4, 5, 6))
        kbuf, vbuf, n = loaded.read_flows()
        assert n == len(keys)  # more than one batch of 4,096
        got = {kbuf[i * 32 : (i + 1) * 32]: nb.COUNTERS_FLAT.unpack_from(vbuf, i * nb.COUNTERS_SIZE) for i in range(n)}
        assert set(got) == set(keys)
        assert all(got[k][1] == 2 * got[k][0] for k in keys)
        assert loaded.lookup_flow(keys[0]) == nb.COUNTERS_FLAT.pack(1, 2, 3, 4, 5, 6)
        # Deleting a batch that holds a missing key still deletes the others.
        assert loaded.delete_flows([*keys[:5000], b"\7" * 32, *keys[5000:]]) == len(keys)
        assert loaded.read_flows()[2] == 0
        assert loaded.lookup_flow(keys[0]) is None
    finally:
        loaded.close()
