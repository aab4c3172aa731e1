"""The local provider: nodes are systemd containers on one Docker engine, DNS a local server."""
