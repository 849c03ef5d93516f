"""The jobs wing: the planner (missing cells → jobs), leases, cell writes and the job runner that the
in-process `selectit score` and the Celery workers share; who holds a job (`holders`), the jobs'
counts for `selectit status` (`counts`) and the fleet's clock ticks (`ticks`).

May import: the base modules, selectit.store and selectit.scoring.
"""
