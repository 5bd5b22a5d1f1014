"""agent part of kairos-py."""
