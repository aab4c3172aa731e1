"""Fixtures that build the node image and start real local nodes (filled in with the local fleet)."""
