"""Rendering: state + templates -> the deploy-config/ artifact."""
