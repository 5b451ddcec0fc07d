"""Read documents from JSONL, JSON, CSV and plain-text files and validate them, streamed
(see :mod:`retrieval.readers.scan`)."""

from retrieval.documents import Invalid
from retrieval.readers.records import Record
from retrieval.readers.scan import FORMATS, SAMPLE_CATALOG, RecordScan, detect_format, line_limit, read_queries, read_records
from retrieval.readers.tabular import CSV_TYPES

__all__ = ["CSV_TYPES", "FORMATS", "SAMPLE_CATALOG", "Invalid", "Record", "RecordScan", "detect_format", "line_limit",
           "read_queries", "read_records"]
