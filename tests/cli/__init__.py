"""The `retrieve` command line: help, errors, the query prefetch, read-only stores and Ctrl-C."""
