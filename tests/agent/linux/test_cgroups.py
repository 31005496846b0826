from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from containers import (  # noqa: F401  (pytest fixtures)
    DockerDaemon,
    Podman,
    RunningContainer,
    docker_container,
    docker_daemon,
    dockerd_flags,
    podman,
)
from heron.agent.linux import cgroups
from heron.agent.linux.cgroups import (
    ContainerRef,
    cgroup_version,
    container_of,
    container_of_uncached,
    container_runtimes_present,
    runtime_presence,
)
from sysutil import remove_dirs

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"
EXPECTED: dict[str, dict[str, str | None] | None] = json.loads((FIXTURES / "expected.json").read_text())
HEX64 = "0123456789abcdef" * 4


def _fixture(name: str) -> str:
    return (FIXTURES / f"{name}.cgroup").read_text()


def test_every_fixture_has_an_expectation() -> None:
    files = {p.stem for p in FIXTURES.glob("*.cgroup")}
    assert files == set(EXPECTED)
    assert len(files) > 50
    # Every runtime the parser knows appears in at least one fixture.
    runtimes = {e["runtime"] for e in EXPECTED.values() if e}
    assert runtimes >= {"docker", "containerd", "cri-o", "podman", "kubernetes", "lxc", "systemd-nspawn"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture(name: str) -> None:
    want = EXPECTED[name]
    got = container_of_uncached(_fixture(name))
    if want is None:
        assert got is None
    else:
        assert got == ContainerRef(want["runtime"] or "", want["id"] or "", want["pod_uid"], want["path"] or "")
    assert container_of(_fixture(name)) == got  # the cached path agrees


def test_single_path_and_proc_line_agree() -> None:
    cid = HEX64
    for path in (f"/docker/{cid}", f"/system.slice/docker-{cid}.scope"):
        assert container_of_uncached(path) == container_of_uncached(f"0::{path}\n")
        assert container_of_uncached(f"5:cpu,cpuacct:{path}") == container_of_uncached(path)


def test_innermost_container_wins_and_lines_are_searched_in_order() -> None:
    a, b = "a" * 64, "b" * 64
    ref = container_of_uncached(f"4:memory:/\n0::/docker/{a}/docker/{b}\n")
    assert ref is not None and ref.id == b
    # The first line that names a container wins; host lines ("/") are skipped.
    ref = container_of_uncached(f"1:name=systemd:/\n2:cpu:/docker/{a}\n0::/docker/{b}\n")
    assert ref is not None and ref.id == a


def test_kubernetes_pod_uid_underscores_become_dashes() -> None:
    path = ("/kubepods.slice/kubepods-besteffort.slice/"
            f"kubepods-besteffort-pod12345678_aaaa_bbbb_cccc_1234567890ab.slice/cri-containerd-{HEX64}.scope")
    ref = container_of_uncached(path)
    assert ref == ContainerRef("containerd", HEX64, "12345678-aaaa-bbbb-cccc-1234567890ab", path)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n\n",
        "/",
        "0::",
        "0::/\n",
        ":::::",
        "garbage",
        "\x00\x01\x02\xff",
        "\udcff\udc80 surrogate escapes",
        b"\xff\xfe/docker/\x00".decode("utf-8", "backslashreplace"),
        f"0::/docker/{HEX64[:63]}",  # one digit short
        f"0::/docker/{HEX64}f",  # one digit long
        f"0::/docker/{HEX64.upper()}",
        f"0::/system.slice/docker-{HEX64}.scope.bak",
        f"0::/system.slice/docker-{HEX64[:-1]}g.scope",
        f"0::/libpod-conmon-{HEX64}.scope",
        "0::/kubepods/burstable/pod12345678-aaaa-bbbb-cccc-1234567890ab",
        "/" * 100_000,
        "0::" + "/a" * 30_000,  # long but under MAX_INPUT: parsed, not cached
        "0::" + "/a" * 50_000,  # over MAX_INPUT: refused unread
        "x" * 1_000_000,
        "1:cpu:/\n" * 100_000,
        ("9:memory:/" + "d" * 64 + "/") * 3000,
    ],
)
def test_hostile_input_is_none_and_never_raises(text: str) -> None:
    assert container_of(text) is None
    assert container_of_uncached(text) is None


def test_mutated_fixtures_never_raise() -> None:
    # Cut, splice and corrupt real fixtures: whatever comes back must be a ContainerRef or None.
    rng = random.Random(1234)
    texts = [_fixture(n) for n in sorted(EXPECTED)]
    alphabet = "/:-_.\n\x00\\ab0f" + HEX64[:8]
    for _ in range(3000):
        t = rng.choice(texts)
        i, j = sorted(rng.randrange(len(t) + 1) for _ in range(2))
        op = rng.randrange(4)
        if op == 0:
            t = t[:i] + t[j:]
        elif op == 1:
            t = t[:i] + "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 8))) + t[i:]
        elif op == 2:
            t = t[:i] + rng.choice(texts)[i:j] + t[j:]
        else:
            t = t[i:j]
        ref = container_of_uncached(t)
        assert ref is None or (isinstance(ref, ContainerRef) and ref.id and ref.runtime)


def test_cache_bounds_and_hits() -> None:
    cgroups.cache_clear()
    text = _fixture("docker_v1_cgroupfs")
    first = container_of(text)
    second = container_of(text)
    assert first is second  # served from the cache
    info = cgroups.cache_info()
    assert info.hits == 1 and info.misses == 1 and info.maxsize == cgroups.CACHE_SIZE
    # Inputs too long to cache are still answered, but not kept.
    big = "0::/docker/" + HEX64 + "/x" * cgroups.CACHE_MAX_INPUT
    ref = container_of(big)
    assert ref is not None and ref.id == HEX64
    assert cgroups.cache_info().currsize == 1


def test_oversized_input_is_refused() -> None:
    text = f"0::/docker/{HEX64}\n" + "#" * cgroups.MAX_INPUT
    assert container_of_uncached(text[: cgroups.MAX_INPUT]) is not None
    assert container_of(text) is None


def test_parse_is_fast() -> None:
    # Loose bounds (shared CI cores): the point is to catch an accidental quadratic or a syscall.
    texts = [_fixture(n) for n in sorted(EXPECTED)]
    t0 = time.perf_counter()
    for _ in range(20):
        for t in texts:
            container_of_uncached(t)
    per_parse = (time.perf_counter() - t0) / (20 * len(texts))
    assert per_parse < 200e-6, per_parse
    cgroups.cache_clear()
    t0 = time.perf_counter()
    for _ in range(200):
        for t in texts:
            container_of(t)
    per_hit = (time.perf_counter() - t0) / (200 * len(texts))
    assert per_hit < 5e-6, per_hit


# -- host facts -------------------------------------------------------------------------------------
def test_cgroup_version_of_this_host() -> None:
    root = "/sys/fs/cgroup"
    want = "v2" if os.path.exists(f"{root}/cgroup.controllers") else (
        "hybrid" if os.path.exists(f"{root}/unified/cgroup.controllers") else "v1")
    assert cgroup_version() == want


def test_cgroup_version_layouts(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "tasks").write_text("")
    hybrid = tmp_path / "hybrid"
    (hybrid / "memory").mkdir(parents=True)
    (hybrid / "memory" / "tasks").write_text("")
    (hybrid / "unified").mkdir()
    (hybrid / "unified" / "cgroup.controllers").write_text("")
    assert cgroup_version(str(v2)) == "v2"
    assert cgroup_version(str(v1)) == "v1"
    assert cgroup_version(str(hybrid)) == "hybrid"
    assert cgroup_version(str(tmp_path / "missing")) == "none"


def test_runtimes_present_matches_binaries() -> None:
    present = container_runtimes_present()
    assert set(present) <= {"docker", "containerd", "cri-o", "podman"}
    assert ("docker" in present) == bool(shutil.which("dockerd") or runtime_presence()["docker"]["socket"])
    assert ("podman" in present) == bool(shutil.which("podman") or runtime_presence()["podman"]["socket"])


def test_this_process_is_not_in_a_container() -> None:
    # The test runner runs on the host: its own cgroup text must not be taken for a container.
    assert container_of(Path("/proc/self/cgroup").read_text()) is None


def test_names_below_a_user_manager_are_not_containers() -> None:
    # systemd delegates user@UID.service to that user: a docker-<id>.scope there is the user's claim.
    spoof = f"/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{HEX64}.scope"
    assert container_of_uncached(spoof) is None
    assert container_of_uncached(spoof.replace("user@1000.service", "user-runtime-dir@1000.service")) is not None
    # A real container above the user manager (systemd inside a container) is still found.
    real = "b" * 64
    ref = container_of_uncached(f"/system.slice/docker-{real}.scope{spoof}")
    assert ref is not None and (ref.runtime, ref.id) == ("docker", real)


def _v2_root() -> Path:
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (root / "cgroup.controllers").exists():
            return root
    pytest.skip("no cgroup v2 hierarchy mounted")


@pytest.mark.privileged
def test_unprivileged_user_cannot_fake_a_container_in_its_delegated_cgroup() -> None:
    """What systemd does for user@UID.service, done by hand: a cgroup chowned to nobody. nobody then
    makes docker-<id>.scope in it and moves itself there; the kernel's own text must not convince us."""
    top = _v2_root() / f"heron-test-{os.getpid()}.slice"
    manager = top / "user@65534.service"
    spoof = manager / f"docker-{HEX64}.scope"
    manager.mkdir(parents=True)
    child = None
    try:
        for path in (manager, manager / "cgroup.procs", manager / "cgroup.subtree_control"):
            os.chown(path, 65534, 65534)
        child = subprocess.Popen(
            ["/bin/sh", "-c", f'read go; mkdir "{spoof}" && echo $$ > "{spoof}/cgroup.procs" && cat /proc/self/cgroup'],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=lambda: (os.setresgid(65534, 65534, 65534), os.setresuid(65534, 65534, 65534)))
        (manager / "cgroup.procs").write_text(str(child.pid))  # what systemd does when it starts the manager
        text, _ = child.communicate("go\n", timeout=10)
        assert child.returncode == 0
        assert f"user@65534.service/docker-{HEX64}.scope" in text, text  # nobody made it, the kernel says so
        assert container_of_uncached(text) is None
        assert container_of(text) is None
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        remove_dirs((spoof, manager, top))
        assert not top.exists()


# -- real containers --------------------------------------------------------------------------------
@pytest.mark.privileged
def test_real_docker_container(docker_container: RunningContainer) -> None:  # noqa: F811
    c = docker_container
    assert len(c.id) == 64
    ref = container_of(c.cgroup_text())
    assert ref is not None, c.cgroup_text()
    assert (ref.runtime, ref.id, ref.pod_uid) == ("docker", c.id, None)
    assert c.id in ref.path
    # A process started later inside the container (docker exec) resolves to the same container.
    r = c.daemon.cli("exec", "-d", c.id, "sleep", "3131")
    assert r.returncode == 0, r.stderr
    pid = _wait_for_cmdline(b"sleep\x003131\x00")
    assert container_of(Path(f"/proc/{pid}/cgroup").read_text()) == ref
    # The daemon's socket is what doctor reports.
    assert "docker" in container_runtimes_present()


@pytest.mark.privileged
def test_real_docker_child_process_and_host_neighbour(docker_daemon: DockerDaemon) -> None:  # noqa: F811
    with docker_daemon.container("/bin/sh", "-c", "sleep 600 & exec sleep 601") as c:
        children = _children(c.pid)
        assert children, "the container's sh should have a sleeping child"
        for pid in [c.pid, *children]:
            ref = container_of(Path(f"/proc/{pid}/cgroup").read_text())
            assert ref is not None and ref.id == c.id and ref.runtime == "docker"
        # The daemon itself (when it is our own) is a host process.
        dockerd = docker_daemon.daemon_pid()
        if dockerd is not None:
            assert container_of(Path(f"/proc/{dockerd}/cgroup").read_text()) is None
    # Removed: the process is gone.
    assert not os.path.exists(f"/proc/{c.pid}")


@pytest.mark.privileged
def test_real_two_containers_get_distinct_ids(docker_daemon: DockerDaemon) -> None:  # noqa: F811
    with docker_daemon.container() as a, docker_daemon.container() as b:
        ra, rb = container_of(a.cgroup_text()), container_of(b.cgroup_text())
        assert ra is not None and rb is not None
        assert (ra.id, rb.id) == (a.id, b.id) and ra.id != rb.id
    ps = docker_daemon.cli("ps", "-aq", "--filter", "name=heron-test-").stdout.split()
    assert a.id[:12] not in ps and b.id[:12] not in ps


@pytest.mark.privileged
def test_real_podman_container_and_its_conmon(podman: Podman) -> None:  # noqa: F811
    with podman.container() as c:
        ref = container_of(c.cgroup_text())
        assert ref is not None, c.cgroup_text()
        assert (ref.runtime, ref.id, ref.pod_uid) == ("podman", c.id, None)
        # conmon watches the container from outside it: it must not be taken for the container.
        conmon = _wait_for_cmdline_prefix(b"/usr/bin/conmon\x00", c.id.encode())
        assert container_of(Path(f"/proc/{conmon}/cgroup").read_text()) is None


def test_ci_script_starts_dockerd_like_the_fixture() -> None:
    script = (Path(__file__).parents[3] / "scripts" / "ci-containers.sh").read_text()
    for flag in dockerd_flags():
        name = flag.split("=")[0]
        assert name in script, f"{name} differs between scripts/ci-containers.sh and tests/containers.py"


def _children(pid: int) -> list[int]:
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rfind(b")") + 2 :].split()[1]) == pid:
                kids.append(int(name))
    return kids


def _wait_for_cmdline(cmdline: bytes, timeout: float = 10) -> int:
    return _wait_for(lambda c: c == cmdline, cmdline, timeout)


def _wait_for_cmdline_prefix(prefix: bytes, contains: bytes, timeout: float = 10) -> int:
    return _wait_for(lambda c: c.startswith(prefix) and contains in c, prefix, timeout)


def _wait_for(match: Callable[[bytes], bool], what: bytes, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if match(Path(f"/proc/{name}/cmdline").read_bytes()):
                        return int(name)
                except OSError:
                    continue
        time.sleep(0.05)
    raise AssertionError(f"no process {what!r}")
