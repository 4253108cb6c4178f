"""The ground floor of pictag's outputs: files on a local disk or object storage, written whole, and locked.

Jobs, embedding stores, search indexes, training runs, model folders, exports, caches and reports all write through
it, and it imports nothing of theirs:

- `files`: where a file is (a local path, or an fsspec URL), files and folders written whole, the write errors a user
  can fix;
- `lock`: one writer per output (a POSIX record lock locally, a renewed lease on object storage), and a lock that
  makes a second writer of a shared cache wait for the first;
- `parts`: `PartStore`, a folder of parts committed whole, one per unit of work, and the run's small files;
- `tables`: `TableWriter` and `write_table`, one CSV or Parquet output streamed into place.

Each is imported by itself, so that reading a location (`files`) does not import pyarrow.
"""
