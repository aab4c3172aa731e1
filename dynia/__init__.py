"""Dynia: a handful of servers run as one highly available cluster."""

__version__ = "2.0.0"
