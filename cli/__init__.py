"""The `tessera` command line: one entry point, sub-commands per role."""
