"""kairos-py: turn any Linux distribution into an immutable, A/B-upgradable OS."""

__version__ = "0.1.0"
