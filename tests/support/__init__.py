"""Helpers shared by tests: loopback servers and fixtures that several test modules use."""
