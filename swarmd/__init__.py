"""swarmd: the daemon."""

__version__ = "0.1.0"
