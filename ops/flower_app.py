"""Celery app for Flower: ``celery -A ops.flower_app flower``.

Built from the same settings as the API and the workers, so Flower uses the
same broker and transport options (visibility timeout) without importing the
worker code or llama.cpp.
"""

from shared.celeryconf import make_celery
from shared.settings import load_settings

celery_app = make_celery(load_settings(), "chatq-flower")
