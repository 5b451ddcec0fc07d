"""The test suite: one package per layer of the product (see docs/testing.md)."""
