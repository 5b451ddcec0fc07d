"""Search: the query pipeline (:mod:`retrieval.search.pipeline`), the results it gives
(:mod:`retrieval.search.hits`) and the interface every searcher offers
(:mod:`retrieval.search.searcher`). The package imports none of them itself, so that the
remote client can use a hit without loading the pipeline's stack."""
