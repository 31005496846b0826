"""Event types shared by agent and platform."""
