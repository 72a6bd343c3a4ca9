"""Helpers shared by the tests: factories, and scripts the tests run by path."""
