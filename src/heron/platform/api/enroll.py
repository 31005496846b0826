"""POST /api/v1/enroll and PUT /api/v1/agents/self (docs/wire.md, Enrolment)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from heron.platform.api.auth import AGENT_ROLES, ENROLL_ROLES, authenticate, hash_token, new_token
from heron.platform.api.context import ApiError, context, decode_json_body
from heron.platform.storage.base import AgentRecord

Short = Annotated[str, msgspec.Meta(max_length=256)]
# What a host name can hold (RFC 1123 letters, digits, dots and hyphens, plus the underscore some
# hosts use). Agents are untrusted: the name reaches alert titles, notifications, syslog lines and
# suppression globs, so anything else is refused rather than cleaned.
HOSTNAME_RE = re.compile(r"[A-Za-z0-9._-]{1,253}\Z")


class HostFacts(msgspec.Struct, kw_only=True):
    hostname: Short = ""
    machine_id: Short = ""
    boot_id: Short = ""
    kernel: Short = ""
    distro: Short = ""
    arch: Short = ""


class AgentUpdate(msgspec.Struct, kw_only=True):
    agent_version: Short = ""
    host: HostFacts


class EnrollRequest(AgentUpdate, kw_only=True):
    name: Short | None = None


def _check_hostname(host: HostFacts) -> None:
    if not HOSTNAME_RE.match(host.hostname):
        raise ApiError(400, "host.hostname must be 1-253 characters among letters, digits, '.', '-' and '_'")


async def enroll(request: Request) -> Response:
    await authenticate(request, ENROLL_ROLES)
    body = await decode_json_body(request, EnrollRequest)
    _check_hostname(body.host)
    now = time.time_ns()
    agent_id = uuid.uuid4().hex
    token = new_token()
    agent = AgentRecord(
        agent_id=agent_id,
        name=body.name or body.host.hostname,
        host=msgspec.json.encode(body.host).decode(),
        hostname=body.host.hostname,
        version=body.agent_version,
        first_seen=now,
        last_seen=now,
        last_health=None,
    )
    await run_in_threadpool(context(request).storage.add_agent, agent, hash_token(token))
    return JSONResponse({"agent_id": agent_id, "token": token}, status_code=201)


async def update_self(request: Request) -> Response:
    record = await authenticate(request, AGENT_ROLES)
    body = await decode_json_body(request, AgentUpdate)
    _check_hostname(body.host)
    assert record.agent_id is not None  # agent tokens always name their agent
    found = await run_in_threadpool(
        context(request).storage.update_agent,
        record.agent_id,
        msgspec.json.encode(body.host).decode(),
        body.host.hostname,
        body.agent_version,
        time.time_ns(),
    )
    if not found:
        raise ApiError(404, "agent not found")
    return JSONResponse({})
