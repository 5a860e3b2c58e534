"""Import every table so `Base.metadata` is complete (Alembic, tests, SQLite bootstrap)."""

from service.accounts.models import Account, ApiKey
from service.audit.models import AuditEvent
from service.console.models import ConsoleSession
from service.datasets.models import Dataset, Shard, SyntheticImage
from service.db import Base
from service.modelversions.models import ModelVersion
from service.reviews.models import Review

__all__ = ["Account", "ApiKey", "AuditEvent", "Base", "ConsoleSession", "Dataset", "ModelVersion", "Review", "Shard", "SyntheticImage"]
