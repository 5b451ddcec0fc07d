"""Searching: the modes (dense, keyword, hybrid), more like this, vector arithmetic, metadata filters."""
