"""Celery workers: one process per GPU, warm models, thin tasks that call core."""
