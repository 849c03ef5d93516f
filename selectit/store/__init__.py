"""The store wing: the curation database — connection, schema (ORM tables) and lookups, and the
near-duplicate signature cells (`signatures`: pure Python over rensa, computed at ingest).

May import: selectit.errors, selectit.contract, selectit.settings. Nothing else of selectit.
"""
