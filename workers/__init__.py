"""The Celery worker fleet: `selectit.workers.app` (this directory, installed as `selectit.workers`) holds the app and its tasks; `selectit.workers.control` the control loop that keeps the clock."""
