"""stages part of kairos-py."""
