"""`python -m retrieval.cli` is the `retrieve` command."""

from retrieval.cli import main

main()
