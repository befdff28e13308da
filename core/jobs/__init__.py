"""Job state and queues: the JobStore (Redis or in-memory) and the Queue (Celery or an in-process thread)."""
