"""`retrieve serve`: the HTTP API as a real subprocess, and the search page in Chromium."""
