"""heron.platform.storage."""
