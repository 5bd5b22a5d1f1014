"""bootloader part of kairos-py."""
