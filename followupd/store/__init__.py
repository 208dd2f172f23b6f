"""The database layer: every statement followupd runs against its own tables.

One module a concept, lowest first:

- `database`: opening a database safely, migrating it (one migrator at a time), `Store`
- `dialect`: INSERT ... ON CONFLICT where the database has it
- `stamps`: change stamps that never go back, so planning's cursors miss nothing
- `meta`: the installation id, meta facts and planning cursors
- `listener`: PostgreSQL LISTEN/NOTIFY, which wakes a daemon when rows change
- `quota`: a mailbox's token bucket, shared by every replica
- `releases`: the release-of-information history
- `directory`: practices, physicians and the addresses notes go to
- `entry`: data entry (upserts by natural key, releases, a referral changed by hand)
- `reads`: planning's page reads, built once with bind parameters
- `ledger`: the follow-up ledger (planning's writes, delivery's loads, sync, counts)
- `claims`: leases and fences on ledger rows
- `health`: the facts a health check judges from

Import from here; the modules are the map, not the interface.
"""

from followupd.store.claims import (
    claim_due,
    claim_withdrawals,
    expire_dead_claims,
    record_result,
    release_claim,
)
from followupd.store.database import (
    SCHEMA_HEAD,
    Store,
    StoreError,
    _alembic_config,
    create_engine,
    mask_url,
    migrate,
    schema_state,
)
from followupd.store.directory import Directory, address_skeleton, confirm_address
from followupd.store.entry import (
    REFERRAL_DEFAULTS,
    VISIT_DEFAULTS,
    Counts,
    change_referral,
    record_release,
    referral_exists,
    upsert_referrals,
    upsert_visits,
)
from followupd.store.health import HealthFacts, health_facts
from followupd.store.ledger import (
    cancel_orphans,
    disclosed_notes,
    drafts_to_sync,
    due_backlog,
    follow_ups_by_id,
    insert_follow_ups,
    ledger_listing,
    load_bundle,
    recent_failures,
    record_sync,
    update_follow_ups,
)
from followupd.store.listener import ChangeListener
from followupd.store.meta import (
    installation_id,
    read_cursor,
    read_meta,
    read_meta_prefix,
    write_cursor,
    write_meta,
)
from followupd.store.quota import SharedTokenBucket
from followupd.store.reads import changed_referrals, changed_visits, ledger_rows, referrals_by_id
from followupd.store.stamps import change_stamp

__all__ = [
    "REFERRAL_DEFAULTS",
    "SCHEMA_HEAD",
    "VISIT_DEFAULTS",
    "ChangeListener",
    "Counts",
    "Directory",
    "HealthFacts",
    "SharedTokenBucket",
    "Store",
    "StoreError",
    "_alembic_config",
    "address_skeleton",
    "cancel_orphans",
    "change_referral",
    "change_stamp",
    "changed_referrals",
    "changed_visits",
    "claim_due",
    "claim_withdrawals",
    "confirm_address",
    "create_engine",
    "disclosed_notes",
    "drafts_to_sync",
    "due_backlog",
    "expire_dead_claims",
    "follow_ups_by_id",
    "health_facts",
    "insert_follow_ups",
    "installation_id",
    "ledger_listing",
    "ledger_rows",
    "load_bundle",
    "mask_url",
    "migrate",
    "read_cursor",
    "read_meta",
    "read_meta_prefix",
    "recent_failures",
    "record_release",
    "record_result",
    "record_sync",
    "referral_exists",
    "referrals_by_id",
    "release_claim",
    "schema_state",
    "update_follow_ups",
    "upsert_referrals",
    "upsert_visits",
    "write_cursor",
    "write_meta",
]
