"""The store wing: the curation database — connection, schema (ORM tables) and lookups.

May import: selectit.errors, selectit.contract, selectit.settings. Nothing else of selectit.
"""
