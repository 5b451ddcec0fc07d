"""Optional adapters to other frameworks: each module imports its framework, nothing else in the package does."""
