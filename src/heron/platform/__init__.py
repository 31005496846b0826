"""heron.platform."""
