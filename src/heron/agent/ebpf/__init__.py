"""heron.agent.ebpf."""
