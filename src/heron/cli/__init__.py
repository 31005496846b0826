"""heron.cli."""
