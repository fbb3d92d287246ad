"""Import and export the agency's data as CSV, JSON or NDJSON, streamed in batches.

An import reads one file into one table inside one transaction and upserts by
the table's key (``id``, or a link table's key columns). Every cell is
converted and checked for its column's type; foreign keys are checked batch by
batch against the database, which already holds the earlier rows of the same
file. The first bad row stops the import with one sentence naming the file,
the line (or JSON item), the row's key and the column; nothing of the file is
written.

Memory stays flat whatever the file's size: rows are read as a stream,
converted straight to the values the database stores and written with
``executemany`` a batch at a time. Only bounded caches of foreign keys known
to exist, and the forward references of a self-referencing table (a
supervisor listed after the staff member) that are still open, are kept
across batches.

A folder of files, or the queries of ``data pull``, go through
:func:`import_sources`: several tables in foreign-key order in one
transaction, with ``replace`` (rows not given are deleted, children first)
and ``dry_run`` (everything done and counted, then rolled back).

The parts: ``columns`` (columns as files see them, the tables, results),
``converters`` (a cell to the value stored), ``readers`` (CSV, JSON, NDJSON,
mappings), ``importer`` (the importer and the import API) and ``export``.
Their public names are all here.
"""

from __future__ import annotations

from cpmail.dataio.columns import (
    ADDRESS_COLUMNS,
    BATCH_ROWS,
    CHOICES,
    EXPORT_FORMATS,
    EXTENSIONS,
    FORMATS,
    JSON_ITEM_MAX,
    KNOWN_KEYS_MAX,
    LINE_MAX,
    LIST_COLUMNS,
    LOOKUP_CHUNK,
    POLYMORPHIC,
    SQLITE_IMPORT_CACHE_KIB,
    STATUS_COLUMNS,
    ColumnSpec,
    ImportResult,
    TableInfo,
    columns_of,
    get_table,
    key_columns,
    table_names,
)
from cpmail.dataio.export import (
    export_file,
    export_stdout,
    export_table,
    table_info,
)
from cpmail.dataio.importer import (
    CASCADE,
    ImportSource,
    file_source,
    folder_sources,
    import_file,
    import_folder,
    import_rows,
    import_sources,
)
from cpmail.dataio.readers import (
    check_readable,
    resolve_import,
)

__all__ = [
    "ADDRESS_COLUMNS",
    "BATCH_ROWS",
    "CASCADE",
    "CHOICES",
    "EXPORT_FORMATS",
    "EXTENSIONS",
    "FORMATS",
    "JSON_ITEM_MAX",
    "KNOWN_KEYS_MAX",
    "LINE_MAX",
    "LIST_COLUMNS",
    "LOOKUP_CHUNK",
    "POLYMORPHIC",
    "SQLITE_IMPORT_CACHE_KIB",
    "STATUS_COLUMNS",
    "ColumnSpec",
    "ImportResult",
    "ImportSource",
    "TableInfo",
    "check_readable",
    "columns_of",
    "export_file",
    "export_stdout",
    "export_table",
    "file_source",
    "folder_sources",
    "get_table",
    "import_file",
    "import_folder",
    "import_rows",
    "import_sources",
    "key_columns",
    "resolve_import",
    "table_info",
    "table_names",
]
