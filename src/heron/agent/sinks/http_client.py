"""The agent's side of docs/wire.md: enrolment, host facts, and one call per batch.

One kept-alive HTTP/1.1 connection (http or https; certificates verified unless told otherwise),
reopened after any error. Not thread-safe: the platform sink's shipper thread is its only user.

Status mapping for ingest (docs/wire.md): 2xx -> OK (a duplicate is delivered too); 400 (malformed),
413 (too large) and 415 (wrong type) can never succeed -> DROP; 401/403 -> forget the agent token
(re-enrol next, if an enrolment token is configured) and RETRY; anything else (429, 5xx, other 4xx,
network errors) -> RETRY, so the batch stays in the spool.
"""

from __future__ import annotations

import http.client
import logging
import os
import ssl
import urllib.parse
from pathlib import Path

import msgspec

from heron import __version__
from heron.agent.health import Health
from heron.agent.sinks.base import Ack
from heron.schema.events import HostInfo

log = logging.getLogger("heron.agent.platform")

API = "/api/v1"
MAX_RESPONSE_BYTES = 1 << 20
CREDENTIALS_FILE = "agent.json"


class PlatformError(Exception):
    """The platform could not be reached or refused a control call; the caller backs off."""


class Credentials(msgspec.Struct):
    agent_id: str
    token: str
    url: str = ""  # the platform that issued them: another URL means enrolling there


class _Ingested(msgspec.Struct):
    accepted: int = 0
    duplicate: bool = False


class _Enrolled(msgspec.Struct):
    agent_id: str
    token: str


class PlatformClient:
    def __init__(self, url: str, *, enrollment_token: str, state_dir: str | os.PathLike[str], host: HostInfo,
                 agent_name: str | None = None, ca_file: str | None = None, verify_tls: bool = True,
                 timeout_s: float = 10.0, health: Health | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"platform URL must be http(s)://host[:port][/prefix], not {url!r}")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._netloc_host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/") + API
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            self._ssl = ssl.create_default_context(cafile=ca_file)
            if not verify_tls:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self.enrollment_token = enrollment_token
        self.state_dir = Path(state_dir)
        self.host = host
        self.agent_name = agent_name
        self.timeout_s = timeout_s
        self.health = health or Health()
        self._conn: http.client.HTTPConnection | None = None
        self._announced = False
        self.credentials = self._load_credentials()

    # -- connection ---------------------------------------------------------------------------------
    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """The kept-alive connection and whether it is brand new."""
        if self._conn is not None:
            return self._conn, False
        if self._https:
            self._conn = http.client.HTTPSConnection(self._netloc_host, self._port, timeout=self.timeout_s,
                                                     context=self._ssl)
        else:
            self._conn = http.client.HTTPConnection(self._netloc_host, self._port, timeout=self.timeout_s)
        return self._conn, True

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        headers = {"User-Agent": f"heron-agent/{__version__}", **headers}
        while True:
            conn, fresh = self._connection()
            try:
                conn.request(method, self._prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read(MAX_RESPONSE_BYTES + 1)
                if len(data) > MAX_RESPONSE_BYTES or resp.will_close:
                    self.close()
                return resp.status, data
            except (OSError, http.client.HTTPException) as e:
                self.close()
                # A kept-alive connection the server closed while idle fails on first use: retry once
                # on a new one (ingest is idempotent by batch id, so a resend is harmless).
                if fresh or isinstance(e, TimeoutError):
                    self.health.add("sink.platform.network_errors")
                    raise PlatformError(f"{method} {path}: {e!r}") from None

    def _auth(self) -> dict[str, str]:
        assert self.credentials is not None
        return {"Authorization": f"Bearer {self.credentials.token}"}

    # -- identity -------------------------------------------------------------------------------------
    def _load_credentials(self) -> Credentials | None:
        path = self.state_dir / CREDENTIALS_FILE
        try:
            creds = msgspec.json.decode(path.read_bytes(), type=Credentials)
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
            log.warning("ignoring unreadable %s: %r", path, e)
            return None
        if creds.url and creds.url != self.url and self.enrollment_token:
            log.info("platform URL changed (%s -> %s): enrolling again", creds.url, self.url)
            return None
        return creds

    def _save_credentials(self, creds: Credentials) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.state_dir / CREDENTIALS_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an older tmp may have had other bits
            os.write(fd, msgspec.json.encode(creds))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _host_body(self, with_name: bool) -> bytes:
        body: dict[str, object] = {"agent_version": __version__, "host": self.host}
        if with_name and self.agent_name:
            body["name"] = self.agent_name
        return msgspec.json.encode(body)

    def enroll(self) -> Credentials:
        if not self.enrollment_token:
            raise PlatformError("not enrolled and no enrolment token configured")
        status, data = self._request("POST", "/enroll", self._host_body(with_name=True), {
            "Authorization": f"Bearer {self.enrollment_token}", "Content-Type": "application/json"})
        if status not in (200, 201):
            raise PlatformError(f"enrolment refused: HTTP {status} {data[:200]!r}")
        try:
            got = msgspec.json.decode(data, type=_Enrolled)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise PlatformError(f"bad enrolment response: {e}") from None
        creds = Credentials(got.agent_id, got.token, self.url)
        self._save_credentials(creds)
        self.credentials = creds
        self._announced = False
        self.health.add("sink.platform.enrolments")
        log.info("enrolled with %s as agent %s", self.url, creds.agent_id)
        return creds

    def forget_token(self) -> None:
        """The platform refused our token: enrol again on the next session, if we can."""
        if self.enrollment_token:
            self.credentials = None
        self._announced = False

    def ensure_session(self) -> None:
        """Enrol if needed and send host facts once per start; raises PlatformError on failure."""
        if self.credentials is None:
            self.enroll()
        if self._announced:
            return
        status, data = self._request("PUT", "/agents/self", self._host_body(with_name=False),
                                     {**self._auth(), "Content-Type": "application/json"})
        if status in (401, 403):
            self.forget_token()
            raise PlatformError(f"agent token refused: HTTP {status}")
        if not 200 <= status < 300:
            raise PlatformError(f"updating host facts: HTTP {status} {data[:200]!r}")
        self._announced = True

    @property
    def ready(self) -> bool:
        return self.credentials is not None and self._announced

    # -- ingest -----------------------------------------------------------------------------------------
    def send(self, body: bytes, batch_id: str) -> Ack:
        """POST one zstd(msgpack) batch; network failures are RETRY, never an exception."""
        if self.credentials is None:
            return Ack.RETRY
        headers = {**self._auth(), "X-Heron-Agent": self.credentials.agent_id, "X-Heron-Batch": batch_id,
                   "Content-Type": "application/x-msgpack", "Content-Encoding": "zstd"}
        try:
            status, data = self._request("POST", "/ingest", body, headers)
        except PlatformError as e:
            log.debug("ingest: %s", e)
            return Ack.RETRY
        if 200 <= status < 300:
            try:
                if msgspec.json.decode(data, type=_Ingested).duplicate:
                    self.health.add("sink.platform.duplicates")
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass  # stored all the same: the status is what counts
            return Ack.OK
        if status in (401, 403):
            log.warning("platform refused the agent token (HTTP %d)", status)
            self.forget_token()
            return Ack.RETRY
        if status in (400, 413, 415):
            log.warning("platform rejected batch %s: HTTP %d %r", batch_id, status, data[:200])
            return Ack.DROP
        return Ack.RETRY


__all__ = ["Credentials", "PlatformClient", "PlatformError"]
