"""The test suite's fixtures live in tests/support.py, shared with the first-party plugins' tests."""
pytest_plugins = ["tests.support"]
