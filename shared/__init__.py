"""The contract between ``api`` and ``workers``: settings, schemas, Redis keys, stores.

``api`` and ``workers`` both import this package and never import each other.
"""
