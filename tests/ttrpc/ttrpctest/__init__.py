"""Test service shared by the ttrpc and interop tests."""
