"""The fusion wing: DuckDB over the curation database — the SelectIT formulas as SQL views,
coverage, status, selections, and the read-only SQL console.

May import: the base modules and selectit.store.
"""
