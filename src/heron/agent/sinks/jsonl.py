"""Local JSON-lines output: one event per line, to a file or stdout.

The file is opened in append mode and written per batch; each batch is pushed to the kernel as one
write, so everything the pipeline handed over survives an agent crash. Encoding is msgspec's JSON encoder
into one buffer per batch (no per-event write call).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import BinaryIO

import msgspec

from heron.schema.events import Event


class JsonlSink:
    def __init__(self, path: str | None) -> None:
        """``path`` None or "-" writes to stdout."""
        self.name = "jsonl" if path not in (None, "-") else "stdout"
        self._own = path not in (None, "-")
        if self._own:
            assert path is not None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._out: BinaryIO = os.fdopen(fd, "ab", buffering=1 << 16)
        else:
            self._out = sys.stdout.buffer
        self._enc = msgspec.json.Encoder()
        self._buf = bytearray()
        self.written = 0

    def write(self, events: Sequence[Event]) -> None:
        buf = self._buf
        buf.clear()
        for ev in events:
            self._enc.encode_into(ev, buf, len(buf))
            buf.extend(b"\n")
        self._out.write(buf)
        self._out.flush()  # one write per batch: readers (tail -f, scripts) see whole batches promptly
        self.written += len(events)

    def flush(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # stdout closed by a pipe reader: not our failure
            self._out.flush()

    def close(self) -> None:
        self.flush()
        if self._own:
            self._out.close()
