"""heron.platform.api."""
