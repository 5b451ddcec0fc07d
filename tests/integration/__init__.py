"""The whole product: the README and the docs, the seed example, crash kills, the benchmark smoke tests, Ray."""
