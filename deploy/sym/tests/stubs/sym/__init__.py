"""Test stand-in for Sym's top-level package (see ../README.md)."""
