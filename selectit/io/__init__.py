"""The io wing: data in (readers of every supported format, ingest) and out (exports, dataset cards).

Modules: `records` (the record shapes as conversations: role tables, rendering, the content hash,
column maps — shared by readers and writers), `readers` (format detection, `RecordReader`),
`json_text`, `file_bytes` and `hub` (JSON lists; a file's encoding; `datasets` directories and the Hub cache), `ingest` (into the
store), `export` (a selection gathered from the store), `trainer` (conversations fitted to what
LLaMA-Factory and TRL read, the rows left out), `export_files` (each export format's
files), `card` (the dataset card and LLaMA-Factory's entry), `writer` (atomic file writes). The
report is a wing of its own (`selectit.report`).

May import: the base modules, selectit.store and selectit.fusion.
"""
