"""Test stand-in for sym.sdk (see ../../README.md)."""
