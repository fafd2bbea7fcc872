"""Data ingestion: sources through ``datasets``, label mapping, cleaning, pool and task splits."""

from metapt_core.data.cleaning import CleanResult, clean_texts, fix_encoding, normalize_text
from metapt_core.data.ingest import (
    POOL_FILE,
    ROW_SCHEMA,
    TASKS_FILE,
    IngestResult,
    Rows,
    build_pool,
    check_leakage,
    classes_of,
    ingest_pool,
    ingest_tasks,
    load_rows,
    read_rows,
    row_ids,
    stratified_sample,
    stratified_split,
)
from metapt_core.data.labels import LabelResult, bin_index, map_labels
from metapt_core.data.sources import BUILTIN_SETS, load_source

__all__ = [
    "BUILTIN_SETS",
    "POOL_FILE",
    "ROW_SCHEMA",
    "TASKS_FILE",
    "CleanResult",
    "IngestResult",
    "LabelResult",
    "Rows",
    "bin_index",
    "build_pool",
    "check_leakage",
    "classes_of",
    "clean_texts",
    "fix_encoding",
    "ingest_pool",
    "ingest_tasks",
    "load_rows",
    "load_source",
    "map_labels",
    "normalize_text",
    "read_rows",
    "row_ids",
    "stratified_sample",
    "stratified_split",
]
