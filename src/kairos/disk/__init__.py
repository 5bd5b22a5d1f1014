"""disk part of kairos-py."""
