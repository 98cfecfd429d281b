"""The package version (kept apart so the CLI can read it cheaply)."""

__version__ = "0.1.0"
