"""immucore part of kairos-py."""
