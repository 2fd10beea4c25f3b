"""A FastAPI service that publishes from an endpoint and consumes in its lifespan.

Run it with ``uvicorn --factory melange.examples.fastapi_service.app:create_app`` (the backend
from ``MELANGE_BACKEND_URL``; see ``docs/integrations.md``).
"""
