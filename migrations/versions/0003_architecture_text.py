"""model_versions.architecture as text: an 80-character column cut the shipped default's description

Revision ID: 0003_architecture_text
Revises: 0002_console_sessions
Create Date: 2026-12-02 17:50:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003_architecture_text'
down_revision: str | Sequence[str] | None = '0002_console_sessions'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch: SQLite (the one-box fallback) cannot alter a column's type in place.
    with op.batch_alter_table('model_versions') as batch:
        batch.alter_column('architecture', existing_type=sa.String(length=80), type_=sa.Text(),
                           existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('model_versions') as batch:
        batch.alter_column('architecture', existing_type=sa.Text(), type_=sa.String(length=80),
                           existing_nullable=False, postgresql_using='left(architecture, 80)')
