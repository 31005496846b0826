"""The built-in file integrity policy: the places attackers change to persist, escalate or hide.

Choices, and why:
- Hash: /etc, units, cron, keys and profiles are small: always hashed. Binaries and libraries are
  hashed up to 32 MiB (nearly every ELF file; the rest, a few huge libraries, are tracked by
  metadata with ``hash_skipped="too_large"``: a 200 MB libLLVM rewritten in place at equal size and
  mtime is not what an intruder does).
- /bin, /sbin, /lib* are listed although on merged-/usr systems they are symlinks to /usr: the
  scan records the link itself (a retargeted /bin is a finding) and the real target is covered by
  its own /usr entry.
- /root is watched one level deep (a tool dropped there, a changed .bashrc/.profile), plus .ssh and
  the user-level systemd and autostart directories recursively; not the whole tree, whose caches
  (.cache, .npm, .cargo, .rustup, .pyenv...) change all day on a working host.
- Home directories: only ssh keys and config, shell start-up files, user systemd units and
  autostart entries, never the rest of a home.
- Credential reads: opens of /etc/shadow, /etc/gshadow, ssh host keys and users' private keys
  (``read``; one mark per file, so other opens in /etc cost nothing). Legitimate readers (sshd,
  sudo, login, PAM's unix_chkpwd, the ssh client) are told apart by detection rules, not here.
- Shell history: only its deletion is reported (wiping it is a classic cleanup step; bash
  rewrites it on every logout, so anything else would be noise).
- Excludes (quiet on a normal host): editor swap and backup files (``*.swp``, ``*~``, ``.#*``),
  dpkg's transient ``*.dpkg-new``/``*.dpkg-tmp`` (the final rename to the real name is reported),
  and files the system itself rewrites: /etc/mtab, /etc/adjtime (hwclock at shutdown),
  /etc/resolv.conf (DHCP clients rewrite it at every lease renewal; tampered DNS shows in
  net.dns), /etc/.pwd.lock, the lvm metadata cache and archives, cups' state, zpool.cache;
  Python's byte-code caches under library directories (``__pycache__``, ``*.pyc``: written when
  root runs a script whose cache is stale). Temp-name excludes apply to configuration paths only,
  never to binary directories, where a file named ``x~`` could still be run.
  /etc/ld.so.cache is kept: it changes only when ldconfig runs (package installs), and a forged
  one redirects every program's libraries.
- Not watched: /boot/efi and other mount points below a root (the scan stays on the root's file
  system; vfat inode numbers are not stable across mounts, so every boot would look like a change).
"""

from __future__ import annotations

from heron.agent.config import FileWatch

_MIB = 1024 * 1024
EDITOR_TEMP = ["*.swp", "*.swpx", "*.swx", "*~", ".#*", "#*#", "*.dpkg-new", "*.dpkg-tmp", "*.dpkg-dist.tmp"]
PYTHON_CACHE = ["__pycache__", "*.pyc"]
ETC_NOISE = [
    "/etc/mtab", "/etc/adjtime", "/etc/resolv.conf", "/etc/.pwd.lock", "/etc/lvm/cache", "/etc/lvm/archive",
    "/etc/lvm/backup", "/etc/cups/subscriptions.conf*", "/etc/cups/printers.conf*", "/etc/cups/*.O",
    "/etc/zfs/zpool.cache", "/etc/ld.so.cache~",
]
HISTORY = [".bash_history", ".zsh_history", ".python_history", ".lesshst", ".viminfo", ".wget-hsts",
           ".mysql_history", ".psql_history", ".sqlite_history", ".node_repl_history", ".rediscli_history"]
SHELL_STARTUP = [".bashrc", ".bash_profile", ".bash_login", ".bash_logout", ".profile", ".zshrc", ".zprofile",
                 ".zshenv", ".zlogin", ".cshrc", ".tcshrc", ".kshrc", ".config/fish/config.fish"]


def _w(path: str, name: str, *, recursive: bool = True, exclude: list[str] | None = None,
       hash_max_bytes: int = 64 * _MIB, actions: list[str] | None = None, hash: bool = True) -> FileWatch:
    return FileWatch(path=path, name=name, recursive=recursive, exclude=exclude or [], hash=hash,
                     hash_max_bytes=hash_max_bytes, actions=actions or [])


def _binaries(path: str) -> FileWatch:
    return _w(path, "system-binaries", hash_max_bytes=32 * _MIB)


def _libraries(path: str) -> FileWatch:
    return _w(path, "system-libraries", exclude=PYTHON_CACHE, hash_max_bytes=32 * _MIB)


def _build() -> list[FileWatch]:
    conf = EDITOR_TEMP
    watches = [
        # Specific /etc entries first: they name the finding ("sudoers" rather than "etc").
        _w("/etc/ld.so.preload", "ld-preload"),
        _w("/etc/ld.so.conf*", "ld-config", exclude=conf),
        _w("/etc/sudoers*", "sudoers", exclude=conf),
        _w("/etc/cron*", "cron", exclude=conf),
        _w("/etc/anacrontab", "cron"),
        _w("/etc/systemd", "systemd-units", exclude=conf),
        _w("/etc/init.d", "init-scripts", exclude=conf),
        _w("/etc/rc.local", "init-scripts"),
        _w("/etc/profile*", "shell-profiles", exclude=conf),
        _w("/etc/bash.bashrc", "shell-profiles"),
        _w("/etc/environment", "shell-profiles"),
        _w("/etc/zsh", "shell-profiles", exclude=conf),
        _w("/etc/ssh", "ssh-config", exclude=conf),
        _w("/etc/pam.d", "pam", exclude=conf),
        _w("/etc/security", "pam", exclude=conf),
        _w("/etc/passwd", "accounts"),
        _w("/etc/shadow", "accounts"),
        _w("/etc/group", "accounts"),
        _w("/etc/gshadow", "accounts"),
        _w("/etc", "etc", exclude=conf + ETC_NOISE),
        *(_binaries(p) for p in ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")),
        _w("/lib/systemd/system", "systemd-units"),
        _w("/usr/lib/systemd/system", "systemd-units"),
        _w("/usr/lib/systemd/user", "systemd-units"),
        *(_libraries(p) for p in ("/lib", "/lib32", "/lib64", "/libx32", "/usr/lib", "/usr/lib32", "/usr/lib64",
                                  "/usr/libx32", "/usr/local/lib")),
        _w("/boot", "boot", hash_max_bytes=256 * _MIB),
        _w("/var/spool/cron", "cron"),
        _w("/root", "root-home", recursive=False, exclude=conf + HISTORY),
        _w("/root/.ssh", "ssh-keys", exclude=[*conf, "known_hosts", "known_hosts.old"]),
        _w("/root/.config/systemd", "systemd-units", exclude=conf),
        _w("/root/.config/autostart", "autostart", exclude=conf),
        _w("/home/*/.ssh", "ssh-keys", exclude=[*conf, "known_hosts", "known_hosts.old"]),
        _w("/home/*/.config/systemd", "systemd-units", exclude=conf),
        _w("/home/*/.config/autostart", "autostart", exclude=conf),
    ]
    watches += [_w(f"/home/*/{name}", "shell-profiles", recursive=False) for name in SHELL_STARTUP]
    watches += [_w(f"/root/{name}", "shell-profiles", recursive=False) for name in SHELL_STARTUP]
    # Reads of secrets (fanotify only): password hashes, host and user private keys.
    watches += [_w(p, "credential-read", recursive=False, actions=["read"], hash=False,
                   exclude=["*.pub"])
                for p in ("/etc/shadow", "/etc/gshadow", "/etc/ssh/ssh_host_*_key", "/root/.ssh/id_*",
                          "/home/*/.ssh/id_*")]
    history = [f"{home}/{name}" for home in ("/root", "/home/*") for name in HISTORY[:2]]
    watches += [_w(p, "shell-history", recursive=False, actions=["delete"], hash=False) for p in history]
    return watches


DEFAULT_WATCHES: list[FileWatch] = _build()
