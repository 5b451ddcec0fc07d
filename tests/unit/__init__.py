"""Pure logic: no database server, no process, no model (the settings, the readers, fusion, the merge policy, the pipeline stages, the filter compiler)."""
