"""The coordinator: FastAPI routes, services, SQLAlchemy models, migrations, the sweeper.

It never imports `mpyc` and never receives a patient row or a node's own summary.
"""

from api.app import create_app
from api.settings import CoordinatorSettings

__all__ = ["CoordinatorSettings", "create_app"]
