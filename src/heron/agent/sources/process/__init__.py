"""heron.agent.sources.process."""
