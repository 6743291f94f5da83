"""chatq workers: one Celery worker per queue, one resident GGUF model each."""
