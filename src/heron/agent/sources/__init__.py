"""heron.agent.sources."""
