"""config part of kairos-py."""
