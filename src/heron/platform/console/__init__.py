"""heron.platform.console."""
