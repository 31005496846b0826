"""Event records shared by the agent and the platform.

Every record is a msgspec Struct tagged by its ``type`` field, so one decoder reads a mixed
stream (JSON lines or msgpack). ``SCHEMA_VERSION`` rises when a field changes meaning or is
removed; adding an optional field keeps the version. docs/events.md is written from these
definitions (``python -m heron.schema.docgen``): keep the field docstrings in ``FIELD_DOCS``.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

SCHEMA_VERSION = 1

# Bounds a decoder enforces (the platform decodes what agents send): a few bytes of zstd must not
# become millions of objects. Collectors stay far below them (argv is cut at a byte limit).
ArgvList = Annotated[list[str], msgspec.Meta(max_length=65_536)]


def process_key(boot_id: str, pid: int, start_ticks: int) -> str:
    """The stable identity of one process: unique across pid reuse and reboots.

    ``start_ticks`` is the start time in clock ticks after boot, as /proc/PID/stat field 22
    reports it, so every collector (eBPF, audit, netlink, /proc) derives the same key.
    """
    return f"{boot_id[:8]}-{pid}-{start_ticks}"


class Ancestor(msgspec.Struct, frozen=True, array_like=True):
    """One link of a parent chain: compact on the wire (encoded as [pid, key, exe])."""

    pid: int
    key: str
    exe: str


class Process(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What is known about a process when it executes."""

    key: str
    pid: int
    tid: int = 0
    ppid: int = 0
    start_ticks: int = 0
    exe: str = ""
    comm: str = ""
    argv: ArgvList = msgspec.field(default_factory=list)
    argv_truncated: bool = False
    cwd: str | None = None
    uid: int = -1
    gid: int = -1
    euid: int = -1
    egid: int = -1
    auid: int | None = None
    user: str | None = None
    login_user: str | None = None
    cgroup: str | None = None
    cgroup_id: int | None = None
    container_id: str | None = None
    container_runtime: str | None = None
    pod_uid: str | None = None
    parent_key: str | None = None
    ancestors: Annotated[list[Ancestor], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)


class Event(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="type"):
    """Fields every event carries."""

    v: int = SCHEMA_VERSION
    ts: int  # wall-clock time of the observation, ns since the epoch
    source: str = ""  # the mechanism that saw it, e.g. "process.ebpf"


class ProcessExec(Event, tag="process.exec"):
    """A process executed a new program (execve), or existed when the agent started (source
    `process.snapshot`)."""

    process: Process
    # De-duplication folds identical execs (same exe, argv, parent, user, container) seen in one
    # window into one record: count is how many, first_ts/last_ts bound them.
    count: int = 1
    first_ts: int = 0
    last_ts: int = 0


class ProcessExit(Event, tag="process.exit"):
    """A process (thread group) exited."""

    key: str
    pid: int
    exe: str = ""
    comm: str = ""
    exit_code: int | None = None
    signal: int | None = None
    runtime_ns: int | None = None
    container_id: str | None = None


class AgentHealth(Event, tag="agent.health"):
    """The agent's own state: collectors in use, counters (drops included), footprint. Sent at start,
    every `health_interval_s`, and at stop."""

    agent_version: str
    uptime_s: float
    collectors: Annotated[dict[str, str], msgspec.Meta(max_length=64)]  # capability -> mechanism in use
    counters: Annotated[dict[str, int], msgspec.Meta(max_length=10_000)]  # component.counter -> value
    cpu_s: float
    rss_bytes: int
    messages: Annotated[list[str], msgspec.Meta(max_length=1_000)] = msgspec.field(default_factory=list)


class ProcessRef(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The process behind a network or file event: enough to read it alone, and ``key`` to join
    it to the process's exec record (argv, parent chain). Collectors fill pid (and key when they
    can); the agent's enrichment fills the rest from its process table, never from /proc."""

    key: str = ""
    pid: int = 0
    ppid: int = 0
    exe: str = ""
    comm: str = ""
    uid: int = -1
    user: str | None = None
    auid: int | None = None
    login_user: str | None = None
    container_id: str | None = None
    parent_exe: str | None = None


class NetFlow(Event, tag="net.flow", kw_only=True):
    """Connections and traffic of one process to one remote endpoint over one interval.

    The agent aggregates per (process, direction, protocol, local address, local port class,
    remote address, remote port): an outgoing flow has ``local_port`` 0 (ephemeral ports
    collapse), an incoming one has ``remote_port`` 0 (the client's ephemeral port)."""

    process: ProcessRef | None = None  # None: the socket's owner could not be found (counted)
    direction: str  # "out" (this host connected/sent first) or "in" (accepted/received first)
    protocol: str  # "tcp" or "udp"
    local_addr: str
    local_port: int = 0
    remote_addr: str
    remote_port: int = 0
    domain: str | None = None  # name this process resolved to remote_addr, when known
    connections: int = 0  # TCP connections opened (or UDP socket/peer pairs) in the interval
    bytes_out: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    packets_in: int = 0
    first_ts: int = 0
    last_ts: int = 0
    # Endpoint classification added by the platform: loopback, private, public, link_local,
    # multicast or container (an address of a container on the same host).
    remote_class: str | None = None


class NetListen(Event, tag="net.listen", kw_only=True):
    """A socket started (state "open") or stopped ("closed") listening; at agent start every
    listening socket is reported once with state "open" and source `network.snapshot`."""

    process: ProcessRef | None = None
    protocol: str  # "tcp" or "udp" (a bound, unconnected UDP socket)
    addr: str
    port: int
    state: str = "open"
    since_ts: int = 0  # when the socket started listening, when known (else when first seen)


class DnsQuery(Event, tag="net.dns", kw_only=True):
    """A DNS question a process asked and the answer it got (identical ones folded per interval)."""

    process: ProcessRef | None = None  # None: the asking socket's owner could not be found
    query: str  # name asked, lower case, without the trailing dot
    qtype: str  # A, AAAA, CNAME, PTR, MX, TXT, SRV, ... or TYPE<n>
    rcode: str = "NOERROR"  # NOERROR, NXDOMAIN, SERVFAIL, ... ; "TIMEOUT" when no answer was seen
    answers: Annotated[list[str], msgspec.Meta(max_length=256)] = msgspec.field(default_factory=list)
    ttl: int = 0  # smallest TTL among the answers, seconds
    server: str = ""  # resolver address:port the question went to
    protocol: str = "udp"
    count: int = 1
    first_ts: int = 0
    last_ts: int = 0


class FileMeta(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A file's metadata as stat(2) reports it."""

    mode: int = 0  # st_mode: type and permission bits
    uid: int = -1
    gid: int = -1
    size: int = 0
    mtime_ns: int = 0
    inode: int = 0
    dev: int = 0
    nlink: int = 0


class FileChange(Event, tag="file.change", kw_only=True):
    """A change to a watched path: real-time from fanotify/inotify, or found by a baseline scan
    (source `file.scan`: it happened while nothing watched, so no writer is known)."""

    path: str  # bytes that are not UTF-8 are escaped as \\xNN (see path_escaped)
    path_escaped: bool = False
    action: str  # create, modify, delete, rename, attrib
    # The burst this record stands for, in order (an editor's save: ["create", "modify", "rename"]).
    actions: Annotated[list[str], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)
    old_path: str | None = None  # the previous name, for a rename
    is_dir: bool = False
    # "process" when the writer is known; "unknown" when the mechanism cannot name it (inotify,
    # a scan) — never a guess.
    attribution: str = "process"
    process: ProcessRef | None = None
    package_manager: str | None = None  # dpkg, apt, rpm, dnf, yum, apk... when the writer is one
    old: FileMeta | None = None
    new: FileMeta | None = None
    sha256: str | None = None  # of the new content, when the policy hashes this path
    hash_skipped: str | None = None  # why no hash: too_large, vanished, changed_while_hashing, ...
    rule: str = ""  # the policy entry that matched
    count: int = 1  # raw kernel events folded into this record
    first_ts: int = 0
    last_ts: int = 0


class Package(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One installed package, named as its advisories name it."""

    ecosystem: str  # OSV ecosystem: Debian, Ubuntu, Alpine, Rocky Linux, AlmaLinux, Red Hat, PyPI, npm, ...
    name: str
    version: str  # as the package manager writes it (dpkg: [epoch:]upstream[-revision])
    purl: str  # package URL, e.g. pkg:deb/debian/libc6@2.36-9?arch=amd64&distro=debian-12
    manager: str  # dpkg, rpm, apk, python, npm
    arch: str = ""
    source_name: str = ""  # source package (Debian/Alpine advisories are per source package)
    source_version: str = ""
    distro: str = ""  # OSV ecosystem suffix for OS packages, e.g. "12" (Debian:12), "v3.20" (Alpine:v3.20)
    location: str = ""  # language packages: the directory holding its metadata


class PackageInventory(Event, tag="package.inventory", kw_only=True):
    """The packages of one scope (the host, or one container through /proc/PID/root): complete when
    `full` (at start, and when a diff cannot be trusted), otherwise what changed since the last record."""

    scope: str  # "host" or a container id
    container_id: str | None = None
    distro: str = ""  # e.g. "debian:12"
    full: bool = False
    added: Annotated[list[Package], msgspec.Meta(max_length=500_000)] = msgspec.field(default_factory=list)
    removed: Annotated[list[Package], msgspec.Meta(max_length=500_000)] = msgspec.field(default_factory=list)
    # Databases that could not be read as a whole (corrupt, mid-upgrade): what was skipped and why.
    errors: Annotated[list[str], msgspec.Meta(max_length=1_000)] = msgspec.field(default_factory=list)


class PackageUse(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A package in use: which processes execute or map its files."""

    purl: str
    processes: Annotated[list[ProcessRef], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)
    files: Annotated[list[str], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)
    last_used_ts: int = 0


class PackageActivity(Event, tag="package.activity", kw_only=True):
    """Which packages of one scope are active (a running process executes or maps a file they own).
    Sent when the set changes; `full` lists every active package, otherwise only newly active ones."""

    scope: str
    container_id: str | None = None
    full: bool = False
    active: Annotated[list[PackageUse], msgspec.Meta(max_length=500_000)] = msgspec.field(default_factory=list)
    # purls no running process uses any more (they stay "was active" on the platform for N days)
    inactive: Annotated[list[str], msgspec.Meta(max_length=500_000)] = msgspec.field(default_factory=list)


AnyEvent = (ProcessExec | ProcessExit | AgentHealth | NetFlow | NetListen | DnsQuery | FileChange
            | PackageInventory | PackageActivity)

EVENT_TYPES: tuple[type[Event], ...] = (ProcessExec, ProcessExit, AgentHealth, NetFlow, NetListen, DnsQuery,
                                        FileChange, PackageInventory, PackageActivity)


class HostInfo(msgspec.Struct, kw_only=True):
    """Identity of the host an agent runs on; carried once per batch, not per event."""

    hostname: str
    machine_id: str
    boot_id: str
    kernel: str
    distro: str
    arch: str


_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder(AnyEvent)
_msgpack_encoder = msgspec.msgpack.Encoder()
_events_decoder = msgspec.msgpack.Decoder(list[AnyEvent])


def to_json(event: Event) -> bytes:
    return _json_encoder.encode(event)


def from_json(data: bytes | str) -> AnyEvent:
    event: AnyEvent = _json_decoder.decode(data)
    return event


def encode_events(events: list[Event]) -> bytes:
    """msgpack array of tagged events: the body of one batch on the wire and in the spool."""
    return _msgpack_encoder.encode(events)


def decode_events(data: bytes) -> list[AnyEvent]:
    """Inverse of encode_events; raises msgspec.ValidationError/DecodeError on bad input."""
    return _events_decoder.decode(data)


FIELD_DOCS: dict[str, str] = {
    "hostname": "Host name.",
    "machine_id": "/etc/machine-id.",
    "boot_id": "Kernel boot id (32 hex digits): changes at every boot.",
    "kernel": "Kernel release.",
    "distro": "Distribution and release, e.g. `debian:12`; on a Package, the OSV ecosystem suffix (`12`).",
    "arch": "Machine architecture (on a Package: amd64, x86_64, noarch...).",
    "v": "Schema version of the record (`SCHEMA_VERSION`).",
    "ts": "Wall-clock time of the observation, nanoseconds since the Unix epoch.",
    "source": "The collector that observed it, as `capability.mechanism` (e.g. `process.ebpf`).",
    "type": "Record type: `process.exec`, `process.exit`, `net.flow`, `net.listen`, `net.dns`, `file.change`, "
    "`package.inventory`, `package.activity` or `agent.health`.",
    "process": "The process that executed (see Process).",
    "count": "How many identical execs this record stands for after de-duplication.",
    "first_ts": "Time of the first of the folded execs (ns); 0 when count is 1.",
    "last_ts": "Time of the last of the folded execs (ns); 0 when count is 1.",
    "key": "Stable process identity: first 8 hex digits of the boot id, pid, start time in ticks.",
    "pid": "Process id (thread-group id) in the host's pid namespace.",
    "tid": "Thread that called execve, when it differs from pid.",
    "ppid": "Parent's pid at exec time.",
    "start_ticks": "Start time, clock ticks after boot (as /proc/PID/stat field 22).",
    "exe": "Executable path: the file the kernel executed (for scripts, the script path).",
    "comm": "Kernel task name (at most 15 bytes).",
    "argv": "Full argument vector, bounded by the collector (see argv_truncated).",
    "argv_truncated": "True when argv was longer than the collector's bound and was cut.",
    "cwd": "Working directory at exec time when the collector can see it cheaply, else absent.",
    "uid": "Real user id.",
    "gid": "Real group id.",
    "euid": "Effective user id.",
    "egid": "Effective group id.",
    "auid": "Login (audit) user id: the human behind sudo/su; absent when unset.",
    "user": "User name of uid, from the host's passwd.",
    "login_user": "User name of auid.",
    "cgroup": "cgroup path used for container identity.",
    "cgroup_id": "cgroup v2 id as the kernel reports it (1 on hosts where everything is in the root).",
    "container_id": "Container id (64 hex digits) when the process runs in a container.",
    "container_runtime": "docker, containerd, cri-o, podman, or kubernetes (pod without runtime).",
    "pod_uid": "Kubernetes pod uid when the cgroup path names one.",
    "parent_key": "Process key of the parent.",
    "ancestors": "Parent chain as [pid, key, exe] triples, nearest first, up to pid 1 or the "
    "container boundary.",
    "exit_code": "Exit status (0-255) when the process exited normally.",
    "signal": "Signal number when the process was killed by a signal.",
    "runtime_ns": "Time from start to exit, nanoseconds.",
    "agent_version": "Version of the agent.",
    "uptime_s": "Seconds since the agent started.",
    "collectors": "Mechanism in use for each capability, e.g. {\"process\": \"ebpf\"}.",
    "counters": "Monotonic counters: `component.counter` -> value (received, emitted, dropped, errors...).",
    "cpu_s": "Agent CPU time (user + system) since start, seconds.",
    "rss_bytes": "Agent resident memory, bytes.",
    "messages": "Human-readable notes: collector fallbacks, config errors kept at last good config.",
    "parent_exe": "Executable of the parent process, when known.",
    "direction": "`out` when this host opened the connection (or sent first), `in` when it accepted it.",
    "protocol": "`tcp` or `udp`.",
    "local_addr": "Local IP address (IPv4-mapped IPv6 addresses are written as IPv4).",
    "local_port": "Local port; 0 for outgoing flows (ephemeral ports collapse).",
    "remote_addr": "Remote IP address (IPv4-mapped IPv6 addresses are written as IPv4).",
    "remote_port": "Remote port; 0 for incoming flows (the client's ephemeral port).",
    "domain": "DNS name this process (or, failing that, this host) resolved to the remote address.",
    "connections": "TCP connections opened in the interval (UDP: new socket/peer pairs).",
    "bytes_out": "Payload bytes sent in the interval (TCP/UDP payload; TCP retransmissions not counted again; "
    "sock_diag: bytes acked; procfs: 0, it cannot count).",
    "bytes_in": "Bytes received in the interval.",
    "packets_out": "Packets sent in the interval (0 when the collector cannot count packets).",
    "packets_in": "Packets received in the interval.",
    "remote_class": "Set by the platform: loopback, private, public, link_local, multicast or container.",
    "addr": "Address the socket listens on (`0.0.0.0` or `::` for all).",
    "port": "Port the socket listens on.",
    "state": "`open` or `closed`.",
    "since_ts": "When the socket started listening (ns), or when the agent first saw it.",
    "query": "Name asked, lower case, no trailing dot.",
    "qtype": "Question type: A, AAAA, CNAME, PTR, MX, TXT, SRV... or TYPE<n>.",
    "rcode": "Response code (NOERROR, NXDOMAIN, SERVFAIL...), or TIMEOUT when no response was seen.",
    "answers": "Answer data: addresses for A/AAAA, names for CNAME/PTR/MX/NS, text for TXT.",
    "ttl": "Smallest TTL of the answers, seconds.",
    "server": "Resolver the question went to, `addr:port`.",
    "path": "Absolute path of the file (bytes that are not UTF-8 escaped as `\\xNN`, see path_escaped).",
    "path_escaped": "True when the path held bytes that are not UTF-8 and were escaped.",
    "action": "create, modify, delete, rename or attrib (mode, owner, xattr, times); read: an open of a file a "
              "`read` watch names (fanotify only; credential files in the default policy).",
    "actions": "Every action folded into this record, in order (burst coalescing).",
    "old_path": "The previous path of a renamed file.",
    "is_dir": "True when the path is a directory.",
    "attribution": "`process` when the writer is known, `unknown` when the mechanism cannot tell.",
    "package_manager": "The package manager behind the change (dpkg, apt, rpm, apk...), when the writer "
    "or one of its ancestors is one.",
    "old": "Metadata before the change (from the agent's baseline), when known.",
    "new": "Metadata after the change; absent for a delete.",
    "sha256": "SHA-256 of the new content, when the policy hashes this path.",
    "hash_skipped": "Why there is no hash although the policy asks: too_large, vanished, "
    "changed_while_hashing, not_regular, unreadable.",
    "rule": "Name of the policy entry that matched the path.",
    "mode": "st_mode: file type and permission bits.",
    "size": "Size in bytes.",
    "mtime_ns": "Modification time, ns since the epoch.",
    "inode": "Inode number.",
    "dev": "Device number of the filesystem.",
    "nlink": "Number of hard links.",
    "ecosystem": "OSV ecosystem name (Debian, Ubuntu, Alpine, PyPI, npm...).",
    "name": "Package name as its package manager and advisories name it.",
    "version": "Installed version, in the package manager's own syntax.",
    "purl": "Package URL (https://github.com/package-url/purl-spec).",
    "manager": "The package database it was read from: dpkg, rpm, apk, python or npm.",
    "source_name": "Source package name (OS packages).",
    "source_version": "Source package version, when it differs from the binary's.",
    "location": "Directory of a language package's metadata (site-packages/..., node_modules/...).",
    "scope": "`host`, or the id of the container whose packages these are.",
    "full": "True when the record is complete (not a diff).",
    "added": "Packages installed (or all of them when full).",
    "removed": "Packages no longer installed.",
    "errors": "Package databases that could not be read, and why (their packages are not reported as removed).",
    "active": "Packages in use, with the processes and files that use them.",
    "inactive": "purls of packages no running process uses any more.",
    "processes": "Processes that execute or map the package's files (bounded sample).",
    "files": "Files of the package in use (bounded sample).",
    "last_used_ts": "When a process was last seen using the package (ns).",
}
