"""FlowAggregator bounds and final totals (pure logic, no kernel)."""

from __future__ import annotations

from heron.agent.sources.network.aggregate import OVERFLOW_ADDR, FlowAggregator, SocketSample

T0 = 1_700_000_000_000_000_000


def inbound(sock_id: int, peer: str, bytes_in: int, pid: int = 7) -> SocketSample:
    return SocketSample(sock_id=sock_id, pid=pid, protocol="udp", direction="in", local_addr="10.0.0.1",
                        local_port=53, remote_addr=peer, remote_port=40000 + sock_id % 1000, bytes_in=bytes_in,
                        packets_in=1)


def test_flows_past_max_flows_fold_into_one_overflow_flow_per_endpoint() -> None:
    agg = FlowAggregator(60, max_flows=10)
    for i in range(100):  # a scan: 100 distinct peers
        agg.observe(inbound(i, f"192.0.2.{i}", 5), T0)
    agg.observe(inbound(1000, "198.51.100.1", 5, pid=8), T0)  # another process: its own overflow flow
    flows = agg.flush(T0 + 1)
    assert len(flows) == 12 and agg.folded_sockets == 91
    over = [f for f in flows if f.remote_addr == OVERFLOW_ADDR]
    assert [(f.process.pid if f.process else 0, f.connections, f.bytes_in, f.remote_port) for f in over] == [
        (7, 90, 450, 0), (8, 1, 5, 0)]
    assert sum(f.bytes_in for f in flows) == 505
    # The next interval starts afresh: a folded socket gets its own flow again while there is room.
    agg.observe(inbound(50, "192.0.2.50", 9), T0 + 2)
    (again,) = agg.flush(T0 + 3)
    assert (again.remote_addr, again.bytes_in, again.connections) == ("192.0.2.50", 4, 0)


def test_final_totals_smaller_than_an_overcount_add_nothing() -> None:
    agg = FlowAggregator(60)
    s = SocketSample(sock_id=1, pid=7, protocol="tcp", direction="out", local_addr="10.0.0.1", local_port=0,
                     remote_addr="192.0.2.1", remote_port=443, bytes_out=100, bytes_in=1500)
    agg.observe(s, T0)
    s.bytes_in = 1000  # the kernel's exact total at close: the per-packet count had retransmissions
    s.bytes_out = 120
    agg.observe(s, T0 + 1, final=True)
    (f,) = agg.flush(T0 + 2)
    assert (f.bytes_out, f.bytes_in) == (120, 1500)
    # Without final, a smaller total is a reused id: taken whole.
    agg.observe(SocketSample(sock_id=2, pid=7, protocol="tcp", direction="out", local_addr="10.0.0.1",
                             local_port=0, remote_addr="192.0.2.2", remote_port=443, bytes_in=50), T0)
    agg.observe(SocketSample(sock_id=2, pid=7, protocol="tcp", direction="out", local_addr="10.0.0.1",
                             local_port=0, remote_addr="192.0.2.2", remote_port=443, bytes_in=30), T0 + 1)
    (g,) = agg.flush(T0 + 2)
    assert g.bytes_in == 80
