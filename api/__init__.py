"""chatq's HTTP gateway (FastAPI). Never imports ``workers``."""
