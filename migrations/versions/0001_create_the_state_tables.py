"""Create the state tables

Revision ID: 0001
Revises: (none)
Create Date: 2026-12-04 20:51:35.836939
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('counters',
    sa.Column('name', sa.String(length=50), nullable=False, comment='counter name'),
    sa.Column('value', sa.BigInteger(), nullable=False, comment='running total'),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_counters'))
    )
    op.create_table('cursors',
    sa.Column('name', sa.String(length=200), nullable=False, comment="pull source: 'updated_since', 'collection:<id>' or 'values:<digest>'"),
    sa.Column('value', sa.JSON(), nullable=True, comment="committed cursor: {'updated_at', 'id'} of the last indicator taken"),
    sa.Column('page_token', sa.Text(), nullable=True, comment='pending paging position of an unfinished walk (offset or cursorMark)'),
    sa.Column('signpost', sa.DateTime(), nullable=True, comment='start of the run that owns page_token; the cursor never passes it'),
    sa.Column('run_id', sa.String(length=36), nullable=True, comment='run that last moved the cursor'),
    sa.Column('updated_at', sa.DateTime(), nullable=False, comment='when the row last changed'),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_cursors'))
    )
    op.create_table('indicators',
    sa.Column('id', sa.BigInteger(), autoincrement=False, nullable=False, comment='ThreatQ indicator id'),
    sa.Column('value', sa.Text(), nullable=False, comment='indicator value as ThreatQ stores it'),
    sa.Column('type_name', sa.String(length=100), nullable=False, comment='ThreatQ indicator type name'),
    sa.Column('kind', sa.String(length=20), nullable=True, comment='VirusTotal kind, when supported'),
    sa.Column('identifier', sa.Text(), nullable=True, comment='VirusTotal path identifier after normalisation'),
    sa.Column('status', sa.String(length=20), nullable=False, comment='one of INDICATOR_STATUSES'),
    sa.Column('reason', sa.Text(), nullable=True, comment='why the value is invalid, unsupported or skipped'),
    sa.Column('tq_score', sa.Float(), nullable=True, comment='ThreatQ score at pull time; orders the lookup backlog'),
    sa.Column('tq_updated_at', sa.DateTime(), nullable=True, comment='ThreatQ updated_at at pull time'),
    sa.Column('pulled_at', sa.DateTime(), nullable=False, comment='last time a pull saw it'),
    sa.Column('looked_up_at', sa.DateTime(), nullable=True, comment='last time a verdict was computed for it'),
    sa.Column('next_lookup_at', sa.DateTime(), nullable=True, comment='when the indicator is due for lookup; NULL means never looked up'),
    sa.Column('carries_vt_names', sa.Boolean(), nullable=False, comment='true when the pulled indicator already had an attribute name tqvt writes'),
    sa.CheckConstraint("kind IS NULL OR kind IN ('file', 'url', 'domain', 'ip_address')", name=op.f('ck_indicators_kind')),
    sa.CheckConstraint("status IN ('pending', 'looked_up', 'not_found', 'unsupported', 'invalid', 'skipped')", name=op.f('ck_indicators_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_indicators'))
    )
    with op.batch_alter_table('indicators', schema=None) as batch_op:
        batch_op.create_index('ix_indicators_due', ['status', 'next_lookup_at'], unique=False)
        batch_op.create_index('ix_indicators_identifier', ['kind', 'identifier'], unique=False)

    op.create_table('outbox',
    sa.Column('id', sa.Integer(), nullable=False, comment='surrogate key'),
    sa.Column('indicator_id', sa.BigInteger(), nullable=False, comment='ThreatQ id'),
    sa.Column('indicator_value', sa.Text(), nullable=False, comment='value, for the consume endpoint'),
    sa.Column('indicator_type', sa.String(length=100), nullable=False, comment='ThreatQ type name'),
    sa.Column('desired', sa.JSON(), nullable=False, comment="{'attributes': {name: value}, 'score': int or null} to reach"),
    sa.Column('fingerprint', sa.String(length=64), nullable=False, comment='fingerprint of desired'),
    sa.Column('verdict', sa.String(length=20), nullable=False, comment='verdict behind desired'),
    sa.Column('status', sa.String(length=20), nullable=False, comment='one of OUTBOX_STATUSES'),
    sa.Column('attempts', sa.Integer(), nullable=False, comment='delivery attempts so far'),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=False, comment='earliest time of the next attempt'),
    sa.Column('last_error', sa.Text(), nullable=True, comment='reason of the last failure'),
    sa.Column('claimed_by', sa.String(length=36), nullable=True, comment="run id of the worker that set status 'started'"),
    sa.Column('created_at', sa.DateTime(), nullable=False, comment='when lookup queued it'),
    sa.Column('updated_at', sa.DateTime(), nullable=False, comment='last status change'),
    sa.CheckConstraint("status IN ('new', 'started', 'completed', 'failed', 'dead')", name=op.f('ck_outbox_status')),
    sa.CheckConstraint('attempts >= 0', name=op.f('ck_outbox_attempts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox'))
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_due', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_indicator_id'), ['indicator_id'], unique=False)

    op.create_table('quota_ledger',
    sa.Column('key_hash', sa.String(length=64), nullable=False, comment='SHA-256 of the API key; the key is never stored'),
    sa.Column('minute_limit', sa.Integer(), nullable=False, comment='calls allowed in any 60 s window'),
    sa.Column('daily_limit', sa.Integer(), nullable=False, comment='calls allowed per UTC day'),
    sa.Column('monthly_limit', sa.Integer(), nullable=True, comment='calls per UTC month'),
    sa.Column('limits_source', sa.String(length=20), nullable=False, comment="'virustotal', 'settings' or 'fallback'"),
    sa.Column('limits_read_at', sa.DateTime(), nullable=True, comment='when the limits were last read'),
    sa.Column('recent_calls', sa.JSON(), nullable=False, comment='ISO times of the calls booked in the last 60 seconds'),
    sa.Column('day', sa.String(length=10), nullable=False, comment='UTC date that used_today counts'),
    sa.Column('used_today', sa.Integer(), nullable=False, comment='calls booked on day'),
    sa.Column('month', sa.String(length=7), nullable=False, comment='UTC month that used_month counts'),
    sa.Column('used_month', sa.Integer(), nullable=False, comment='calls booked in month'),
    sa.Column('blocked_until', sa.DateTime(), nullable=True, comment='no call is booked before this time (daily or monthly quota spent)'),
    sa.Column('blocked_scope', sa.String(length=10), nullable=True, comment="'daily' or 'monthly' while blocked"),
    sa.PrimaryKeyConstraint('key_hash', name=op.f('pk_quota_ledger'))
    )
    op.create_table('runs',
    sa.Column('id', sa.String(length=36), nullable=False, comment='run id (UUID)'),
    sa.Column('stage', sa.String(length=20), nullable=False, comment='pull, lookup, push or rescore'),
    sa.Column('started_at', sa.DateTime(), nullable=False, comment='start time'),
    sa.Column('ended_at', sa.DateTime(), nullable=True, comment='end time'),
    sa.Column('outcome', sa.String(length=20), nullable=True, comment="'ok', 'stopped' (exit 75), 'failed' or NULL while running"),
    sa.Column('counts', sa.JSON(), nullable=False, comment='per-stage counters'),
    sa.Column('pid', sa.Integer(), nullable=False, comment='process id'),
    sa.Column('host', sa.String(length=255), nullable=False, comment='host name'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs'))
    )
    op.create_table('verdict_history',
    sa.Column('id', sa.Integer(), nullable=False, comment='surrogate key'),
    sa.Column('indicator_id', sa.BigInteger(), nullable=False, comment='ThreatQ id'),
    sa.Column('verdict', sa.String(length=20), nullable=False, comment='delivered verdict'),
    sa.Column('fingerprint', sa.String(length=64), nullable=False, comment='delivered fingerprint'),
    sa.Column('written_at', sa.DateTime(), nullable=False, comment='delivery time'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_verdict_history'))
    )
    with op.batch_alter_table('verdict_history', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_verdict_history_indicator_id'), ['indicator_id'], unique=False)

    op.create_table('vt_objects',
    sa.Column('id', sa.Integer(), nullable=False, comment='surrogate key'),
    sa.Column('kind', sa.String(length=20), nullable=False, comment='VirusTotal kind'),
    sa.Column('object_key', sa.Text(), nullable=False, comment='data.id for found objects, the requested identifier for not-found ones'),
    sa.Column('found', sa.Boolean(), nullable=False, comment='false when VirusTotal answered 404'),
    sa.Column('summary', sa.LargeBinary(), nullable=True, comment='zlib-compressed JSON of the fields verdicts and attributes need'),
    sa.Column('fetched_at', sa.DateTime(), nullable=False, comment='when VirusTotal answered'),
    sa.Column('expires_at', sa.DateTime(), nullable=False, comment='end of the cache TTL'),
    sa.Column('hits', sa.Integer(), nullable=False, comment='lookups served from this row'),
    sa.CheckConstraint("kind IN ('file', 'url', 'domain', 'ip_address')", name=op.f('ck_vt_objects_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vt_objects')),
    sa.UniqueConstraint('kind', 'object_key', name='uq_vt_objects_kind_key')
    )
    op.create_table('written_state',
    sa.Column('indicator_id', sa.BigInteger(), autoincrement=False, nullable=False, comment='ThreatQ indicator id'),
    sa.Column('fingerprint', sa.String(length=64), nullable=True, comment='fingerprint of the last delivered attribute set'),
    sa.Column('attributes', sa.JSON(), nullable=False, comment="attribute name -> {'id': instance id, 'value': value} as last written"),
    sa.Column('verdict', sa.String(length=20), nullable=True, comment='last delivered verdict'),
    sa.Column('written_at', sa.DateTime(), nullable=True, comment='last delivery'),
    sa.PrimaryKeyConstraint('indicator_id', name=op.f('pk_written_state'))
    )
    op.create_table('vt_aliases',
    sa.Column('kind', sa.String(length=20), nullable=False, comment='VirusTotal kind'),
    sa.Column('identifier', sa.Text(), nullable=False, comment='identifier as sent (MD5, URL id, ...)'),
    sa.Column('object_id', sa.Integer(), nullable=False, comment='cached object this identifier resolves to'),
    sa.ForeignKeyConstraint(['object_id'], ['vt_objects.id'], name=op.f('fk_vt_aliases_object_id_vt_objects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('kind', 'identifier', name=op.f('pk_vt_aliases'))
    )
    with op.batch_alter_table('vt_aliases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vt_aliases_object_id'), ['object_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('vt_aliases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vt_aliases_object_id'))

    op.drop_table('vt_aliases')
    op.drop_table('written_state')
    op.drop_table('vt_objects')
    with op.batch_alter_table('verdict_history', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_verdict_history_indicator_id'))

    op.drop_table('verdict_history')
    op.drop_table('runs')
    op.drop_table('quota_ledger')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_indicator_id'))
        batch_op.drop_index('ix_outbox_due')

    op.drop_table('outbox')
    with op.batch_alter_table('indicators', schema=None) as batch_op:
        batch_op.drop_index('ix_indicators_identifier')
        batch_op.drop_index('ix_indicators_due')

    op.drop_table('indicators')
    op.drop_table('cursors')
    op.drop_table('counters')
