"""heron.agent.transforms."""
