"""build part of kairos-py."""
