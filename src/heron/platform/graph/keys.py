"""Node keys of the behaviour graph: process clusters, file path classes, endpoints, packages.

Pure functions (no database): what makes two processes "the same behaviour" and two paths "the
same place" is decided here, and tested on realistic inputs (tests/platform/graph/test_keys.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
import posixpath
import re

MAX_SHAPE_ARGS = 4  # a command line's shape keeps this many arguments after argv[0]
MAX_TOKEN = 64  # a normalised argument is cut to this many characters
MAX_FILECLASS_DEPTH = 4  # directories kept in a file class; deeper paths end in /**

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}(?![\w:])")
_HEX = re.compile(r"(?<![0-9a-zA-Z])(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}(?![0-9a-zA-Z])")
_NUM = re.compile(r"\d+")
# A long token without path separators or spaces: a key, a session id, base64, a JWT.
_BLOB = re.compile(r"(?<![A-Za-z0-9+_\-=.~/])[A-Za-z0-9+_\-=.~]{33,}")
_TEMP_DIRS = ("/tmp/", "/var/tmp/", "/dev/shm/")
_HOME = re.compile(r"^/home/[^/]+")
_RUN_USER = re.compile(r"^/run/user/\d+")
# Files whose own name is the class: persistence, credentials, shell start-up.
_NAMED_FILES = frozenset({
    "authorized_keys", "authorized_keys2", ".bashrc", ".bash_profile", ".bash_logout", ".profile",
    ".bash_history", ".zshrc", ".zsh_history", "passwd", "shadow", "group", "gshadow", "sudoers",
    "crontab", "ld.so.preload", "rc.local", "hosts", "resolv.conf",
})


MAX_KEY = 512  # characters of a node key: PostgreSQL refuses B-tree entries over ~2.7 KB


def bounded(key: str) -> str:
    """``key`` when short; else a prefix and a digest of the whole (a hostile agent picks exe paths,
    file names and purls, and the node keys are indexed)."""
    if len(key) <= MAX_KEY:
        return key
    return key[:400] + "#" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _generalise_token(token: str) -> str:
    """One argument with its variable parts replaced by placeholders."""
    for prefix in _TEMP_DIRS:
        if token.startswith(prefix):
            return "<tmp>"
    token = _BLOB.sub(lambda m: "<token>" if sum(c.isdigit() for c in m.group(0)) >= 2 else m.group(0), token)
    token = _HOME.sub("/home/<user>", token)
    token = _UUID.sub("<uuid>", token)
    token = _IPV4.sub("<ip>", token)
    token = _IPV6.sub(lambda m: "<ip>" if _is_ip(m.group(0)) else m.group(0), token)
    token = _HEX.sub("<hex>", token)
    token = _NUM.sub("<n>", token)
    return token[:MAX_TOKEN]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def argv_shape(argv: list[str] | tuple[str, ...]) -> str:
    """The command line's shape: argv[1:] generalised and cut to a few arguments.

    ``--opt=value`` keeps the option name and generalises the value; ``-c 'script'`` keeps the
    script's generalised text (a shell's behaviour is its script). argv[0] counts only when the
    process rewrote it into a title with spaces (nginx, postgres, sshd)."""
    out: list[str] = []
    if argv and isinstance(argv[0], str) and " " in argv[0].strip():
        out.append(_generalise_token(" ".join(argv[0].split())))  # a rewritten title: "nginx: worker process"
    for arg in argv[1:]:
        if len(out) >= MAX_SHAPE_ARGS:
            break
        if not isinstance(arg, str) or not arg:
            continue
        if arg.startswith("--") and "=" in arg:
            name, _, value = arg.partition("=")
            out.append(f"{name}={_generalise_token(value)}")
        else:
            out.append(_generalise_token(" ".join(arg.split())))
    return " ".join(out)


def image_of(process: dict[str, object]) -> str:
    """The container image of a process; "host" outside containers. Events carry no image name
    yet (``container_image`` is read when present), so a container's processes use "container"."""
    image = process.get("container_image")
    if isinstance(image, str) and image:
        return image
    return "container" if process.get("container_id") else "host"


def user_of(process: dict[str, object]) -> str:
    user = process.get("user")
    if isinstance(user, str) and user:
        return user
    uid = process.get("uid")
    return f"uid:{uid}" if isinstance(uid, int) else "?"


def cluster_key(exe: str, user: str, image: str, argv: list[str] | tuple[str, ...] | None) -> str:
    """Process cluster identity: same executable, user, image and command-line shape.

    ``argv`` None means unknown (a process seen only through a network or file event whose exec
    record is not known): the shape is then "?"."""
    shape = "?" if argv is None else argv_shape(argv)
    return bounded(f"{exe}|{user}|{image}|{shape}")


def cluster_label(exe: str, user: str, argv_shape_text: str) -> str:
    name = posixpath.basename(exe) or exe
    text = f"{name} {argv_shape_text}".strip() if argv_shape_text != "?" else name
    return f"{text} ({user})"[:160]


def fileclass(path: str) -> str:
    return bounded(_fileclass(path))


def _fileclass(path: str) -> str:
    """A path's class: its directory with per-user and numeric parts generalised.

    /etc/cron.d/job -> /etc/cron.d/*; /home/alice/.ssh/authorized_keys -> /home/*/.ssh/authorized_keys;
    /tmp/x/y -> /tmp/*; /var/lib/docker/overlay2/<id>/diff/... -> /var/lib/docker/overlay2/**."""
    for prefix in _TEMP_DIRS:
        if path.startswith(prefix) or path == prefix[:-1]:
            return prefix + "*"
    path = _HOME.sub("/home/*", path)
    path = _RUN_USER.sub("/run/user/*", path)
    directory, name = posixpath.split(posixpath.normpath(path) if path.startswith("/") else "/" + path)
    parts = [p for p in directory.split("/") if p]
    generalised = []
    for part in parts:
        if part != "*" and (_UUID.fullmatch(part) or _HEX.fullmatch(part) or _NUM.fullmatch(part)):
            part = "*"
        else:
            part = _HEX.sub("*", _UUID.sub("*", part))
        generalised.append(part)
    deep = len(generalised) > MAX_FILECLASS_DEPTH
    base = "/" + "/".join(generalised[:MAX_FILECLASS_DEPTH])
    if deep:
        return base.rstrip("/") + "/**"
    if name in _NAMED_FILES:
        return posixpath.join(base, name)
    return posixpath.join(base, "*")


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def endpoint_key(remote_addr: str, port: int, domain: str | None = None, remote_class: str | None = None) -> str:
    """A remote endpoint: domain:port when the flow has a domain, "loopback:port" for loopback,
    else address:port (IPv6 in brackets)."""
    if remote_class == "loopback" or _is_loopback(remote_addr):
        return f"loopback:{port}"
    if domain:
        return bounded(f"{domain.lower().rstrip('.')}:{port}")
    addr = f"[{remote_addr}]" if ":" in remote_addr else remote_addr
    return bounded(f"{addr}:{port}")


def listen_key(protocol: str, port: int) -> str:
    return f"listen:{protocol}:{port}"


def package_key(purl: str) -> str:
    return bounded(_package_key(purl))


def _package_key(purl: str) -> str:
    """A purl without its version (and qualifiers): pkg:deb/debian/openssl@3.0.11?arch=amd64 ->
    pkg:deb/debian/openssl. A scoped npm name keeps its %40-encoded scope."""
    base = purl.split("?", 1)[0].split("#", 1)[0]
    name, at, _version = base.rpartition("@")
    return name if at and name.startswith("pkg:") else base
