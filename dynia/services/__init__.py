"""Services: one lifecycle step each, the only layer that decides."""
