"""heron.agent.sinks."""
