"""Helpers shared by tests in several folders; test modules import these, never each other."""
