"""heron.agent."""
