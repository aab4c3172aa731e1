"""Shared pytest configuration: fixture plugins live beside this file."""

pytest_plugins = ["fleet_fixtures", "ansible_fixtures"]
