"""heron.agent.spool."""
