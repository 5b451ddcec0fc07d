"""`python -m retrieval` is the `retrieve` command."""

from retrieval.cli import main

main()
