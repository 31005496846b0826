"""heron: runtime security agent for Linux hosts and containers, and its platform."""

__version__ = "0.1.0"
