"""Evaluation: `retrieve eval` against trec_eval, its modes, Cranfield exactness."""
