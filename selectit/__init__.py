"""selectit: SelectIT data selection as a database-backed, incremental curation system.

Importable without torch: the scoring engine (`selectit.scorer`) imports torch itself.
"""

__version__ = "0.1.0"
