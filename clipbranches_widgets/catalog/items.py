"""A catalog's items table (``items.parquet``), opened once and read by row groups on demand.

A page of results needs the captions of 60 items, not the metadata of 100M: ``take(ids)`` decodes
only the row groups that hold ``ids`` (catalogs are written in groups of ``ROW_GROUP_ROWS`` rows),
and ``table()`` reads the whole table only when asked. The file is opened when the catalog is, so
an opened catalog keeps reading the items it was opened with even if the folder is rebuilt in place.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np

#: rows per parquet row group in written catalogs: reading one costs a few milliseconds
ROW_GROUP_ROWS = 65_536


class ItemsFile:
    """``items.parquet`` of an opened catalog: ``num_rows``, ``column_names``, ``take(ids)``, ``table()``."""

    def __init__(self, path):
        import pyarrow.parquet as pq

        self.path = Path(path)
        self._file = open(self.path, "rb")
        weakref.finalize(self, self._file.close)  # closed with the catalog that dropped it
        self._parquet = pq.ParquetFile(self._file)
        meta = self._parquet.metadata
        self.num_rows = int(meta.num_rows)
        self.schema = self._parquet.schema_arrow
        self.column_names = list(self.schema.names)
        self._starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        self._table = None
        self._lock = threading.Lock()  # one reader of the shared file at a time

    def table(self):
        """The whole table (read once, then kept)."""
        with self._lock:
            if self._table is None:
                self._file.seek(0)
                self._table = self._parquet.read()
            return self._table

    def take(self, ids):
        """Rows ``ids`` (int64 row numbers, any order, repeats allowed) as a pyarrow Table."""
        import pyarrow as pa

        ids = np.asarray(ids, np.int64)
        if self._table is not None:
            return self._table.take(ids)
        if ids.shape[0] == 0:
            return self.schema.empty_table()
        groups = np.searchsorted(self._starts, ids, side="right") - 1
        parts, order = [], []
        with self._lock:
            for g in np.unique(groups):
                where = np.flatnonzero(groups == g)
                block = self._parquet.read_row_group(int(g))
                parts.append(block.take(ids[where] - self._starts[g]))
                order.append(where)
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        return table.take(np.argsort(np.concatenate(order), kind="stable"))
