"""vm part of kairos-py."""
