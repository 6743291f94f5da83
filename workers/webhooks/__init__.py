"""The webhook worker, a process of its own apart from the GPU workers:
:mod:`workers.webhooks.app` is its Celery app
(``celery -A workers.webhooks.app worker -Q webhooks``), :mod:`workers.webhooks.delivery`
its parts (feeder, scheduler, signed delivery). Nothing here is imported on import of
the package: the app builds its Celery app and settings when imported, the parts do not.
"""
