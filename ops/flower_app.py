"""Celery app for Flower: ``celery -A ops.flower_app flower``.

Built from the same settings as the API and the workers, so Flower uses the
same broker and transport options (visibility timeout) without importing the
worker code or llama.cpp. Its log lines are JSON like every other process's.
"""

from shared.celeryconf import make_celery
from shared.logs import setup_logging
from shared.settings import load_settings

setup_logging()  # before Flower's tornado sets up its own (it keeps ours when present)
celery_app = make_celery(load_settings(), "chatq-flower")
