"""image part of kairos-py."""
