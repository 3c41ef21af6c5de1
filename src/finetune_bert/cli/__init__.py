"""The command line: one registry of commands, each a config and a function."""
