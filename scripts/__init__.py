"""Thin command-line entry points that the rules call as ``python -m scripts.<name>``."""
