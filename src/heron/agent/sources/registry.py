"""Every source the agent knows, per capability, in ladder order (best first).

Registration is this explicit list: greppable, no import side effects.
"""

from __future__ import annotations

from heron.agent.sources.base import Source
from heron.agent.sources.file.fanotify import FanotifyFileSource
from heron.agent.sources.file.inotify import InotifyFileSource
from heron.agent.sources.network.ebpf import EbpfNetworkSource
from heron.agent.sources.network.procfs import ProcfsNetworkSource
from heron.agent.sources.network.sock_diag import SockDiagNetworkSource
from heron.agent.sources.package.scan import PackageSource
from heron.agent.sources.process.audit import AuditProcessSource
from heron.agent.sources.process.ebpf import EbpfProcessSource
from heron.agent.sources.process.proc_connector import ProcConnectorProcessSource
from heron.agent.sources.process.procfs import ProcfsProcessSource

LADDERS: dict[str, list[type[Source]]] = {
    "process": [
        EbpfProcessSource,
        AuditProcessSource,
        ProcConnectorProcessSource,
        ProcfsProcessSource,
    ],
    "network": [
        EbpfNetworkSource,
        SockDiagNetworkSource,
        ProcfsNetworkSource,
    ],
    "package": [PackageSource],
    "file": [FanotifyFileSource, InotifyFileSource],
}
