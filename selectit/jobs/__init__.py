"""The jobs wing: the planner (missing cells → jobs), leases, cell writes and the job runner that the
in-process `selectit score` and the Celery workers share.

May import: the base modules, selectit.store and selectit.scoring.
"""
