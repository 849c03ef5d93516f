"""The fusion wing: DuckDB over the curation database — the SelectIT formulas as SQL views,
coverage, rater health, selections (`session` runs the ranking recipe once), and the read-only
SQL console.

May import: the base modules and selectit.store.
"""
