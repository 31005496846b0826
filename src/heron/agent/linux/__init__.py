"""heron.agent.linux."""
