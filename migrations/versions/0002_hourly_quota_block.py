"""Allow an hourly scope for a quota block

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 00:30:00

The ledger can now record that VirusTotal reported the hourly allowance spent.
Only the comments of two columns change; a database without column comments
(SQLite) gets no statement.
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


OLD_COMMENTS = {
    'blocked_until': 'no call is booked before this time (daily or monthly quota spent)',
    'blocked_scope': "'daily' or 'monthly' while blocked",
}
NEW_COMMENTS = {
    'blocked_until': 'no call is booked before this time (hourly, daily or monthly quota spent)',
    'blocked_scope': "'hourly', 'daily' or 'monthly' while blocked",
}
TYPES = {'blocked_until': sa.DateTime(), 'blocked_scope': sa.String(length=10)}


def _set_comments(old: dict[str, str], new: dict[str, str]) -> None:
    if not op.get_bind().dialect.supports_comments:
        return
    for column, kind in TYPES.items():
        op.alter_column('quota_ledger', column, existing_type=kind, existing_nullable=True,
                        existing_comment=old[column], comment=new[column])


def upgrade() -> None:
    _set_comments(OLD_COMMENTS, NEW_COMMENTS)


def downgrade() -> None:
    _set_comments(NEW_COMMENTS, OLD_COMMENTS)
