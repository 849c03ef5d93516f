"""The Celery worker fleet: `selectit.workers.app` (this directory, installed as `selectit.workers`) holds the app, its tasks and the beat schedule."""
