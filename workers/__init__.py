"""The Celery worker fleet: `workers.app` holds the app, its tasks and the beat schedule."""
