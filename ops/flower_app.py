"""Celery app for Flower: ``celery -A ops.flower_app flower``.

Built from the same settings as the API and the workers, so Flower uses the
same broker and transport options (visibility timeout) without importing the
worker code or llama.cpp. Its log lines are JSON like every other process's.
Outside development it refuses to start without a real basic-auth password
(:mod:`ops.flower_auth`); compose publishes it on 127.0.0.1 only.
"""

import os
import sys

from ops.flower_auth import basic_auth, check_basic_auth
from shared.celeryconf import make_celery
from shared.logs import setup_logging
from shared.settings import load_settings

setup_logging()  # before Flower's tornado sets up its own (it keeps ours when present)
_settings = load_settings()
check_basic_auth(_settings, basic_auth(os.environ, sys.argv))
celery_app = make_celery(_settings, "chatq-flower")
