"""The io wing: data in (readers of every supported format, ingest) and out (exports, dataset cards,
reports).

May import: the base modules, selectit.store and selectit.fusion.
"""
