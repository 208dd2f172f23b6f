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
- `outreach`: what the outreach reminders and the digest list (a physician's history; the
  week's referrals, drafts waiting, held notes, quiet physicians, prospects)
- `ledger`: the follow-up ledger (planning's writes, delivery's loads, sync, counts)
- `claims`: leases and fences on ledger rows
- `listing`: what a person lists: the ledger for `status`, physicians, referrals, visits
- `sources`: what each watched source's reads found; referrals gone from a source
- `sheet_status`: what a Google Sheet source's status tab shows (refs, dates, states)
- `health`: the facts a health check judges from
- `report`: what `followupd report` reads, grouped in SQL (imported as `store.report`)
- `backup`: copies of a SQLite database made while it is in use, and restoring one

Import from here; the modules are the map, not the interface.
"""

from followupd.store.backup import (
    BackupError,
    CopyRefused,
    NotSQLite,
    backups_in,
    check_copy,
    default_target,
    make_backup,
    newest_backup_time,
    restore,
    rotate,
    sqlite_file,
    staged_restore,
)
from followupd.store.bursts import (
    confirm_due,
    newest_follow_up,
    plan_summary,
    unconfirmed_due,
)
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
    sqlite_path,
)
from followupd.store.directory import (
    AmbiguousPhysician,
    Directory,
    address_skeleton,
    confirm_address,
)
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
    SUBJECT_ROWS,
    cancel_orphans,
    disclosed_notes,
    drafts_to_sync,
    due_backlog,
    follow_ups_by_id,
    insert_follow_ups,
    load_bundle,
    load_bundles,
    recent_failures,
    record_sync,
    update_follow_ups,
)
from followupd.store.listener import ChangeListener
from followupd.store.listing import (
    LedgerFilter,
    ReferralFilter,
    ReferralLine,
    VisitFilter,
    ledger_counts,
    ledger_page,
    ledger_rules,
    ledger_size,
    physician_count,
    physician_page,
    referral_count,
    referral_page,
    visit_count,
    visit_page,
)
from followupd.store.meta import (
    installation_id,
    read_cursor,
    read_meta,
    read_meta_prefix,
    write_cursor,
    write_meta,
)
from followupd.store.outreach import Window, digest_facts, physician_history
from followupd.store.people import (
    Deleted,
    Merged,
    NoPhysician,
    PhysicianConflict,
    PhysicianShown,
    delete_referral,
    edit_physician,
    merge_physicians,
    revoke_releases,
)
from followupd.store.quota import SharedTokenBucket
from followupd.store.reads import (
    changed_physicians,
    changed_referrals,
    changed_visits,
    drafts_made,
    ledger_rows,
    made_thank_yous,
    physician_facts,
    quiet_candidates,
    referrals_by_id,
    thank_you_facts,
    thanked_about,
)
from followupd.store.sheet_status import NoteLine, StatusLine, status_lines
from followupd.store.sources import mark_gone, read_source_states, write_source_state
from followupd.store.stamps import change_stamp

__all__ = [
    "REFERRAL_DEFAULTS",
    "SCHEMA_HEAD",
    "SUBJECT_ROWS",
    "VISIT_DEFAULTS",
    "AmbiguousPhysician",
    "BackupError",
    "ChangeListener",
    "CopyRefused",
    "Counts",
    "Deleted",
    "Directory",
    "HealthFacts",
    "LedgerFilter",
    "Merged",
    "NoPhysician",
    "NotSQLite",
    "NoteLine",
    "PhysicianConflict",
    "PhysicianShown",
    "ReferralFilter",
    "ReferralLine",
    "SharedTokenBucket",
    "StatusLine",
    "Store",
    "StoreError",
    "VisitFilter",
    "Window",
    "_alembic_config",
    "address_skeleton",
    "backups_in",
    "cancel_orphans",
    "change_referral",
    "change_stamp",
    "changed_physicians",
    "changed_referrals",
    "changed_visits",
    "check_copy",
    "claim_due",
    "claim_withdrawals",
    "confirm_address",
    "confirm_due",
    "create_engine",
    "default_target",
    "delete_referral",
    "digest_facts",
    "disclosed_notes",
    "drafts_made",
    "drafts_to_sync",
    "due_backlog",
    "edit_physician",
    "expire_dead_claims",
    "follow_ups_by_id",
    "health_facts",
    "insert_follow_ups",
    "installation_id",
    "ledger_counts",
    "ledger_page",
    "ledger_rows",
    "ledger_rules",
    "ledger_size",
    "load_bundle",
    "load_bundles",
    "made_thank_yous",
    "make_backup",
    "mark_gone",
    "mask_url",
    "merge_physicians",
    "migrate",
    "newest_backup_time",
    "newest_follow_up",
    "physician_count",
    "physician_facts",
    "physician_history",
    "physician_page",
    "plan_summary",
    "quiet_candidates",
    "read_cursor",
    "read_meta",
    "read_meta_prefix",
    "read_source_states",
    "recent_failures",
    "record_release",
    "record_result",
    "record_sync",
    "referral_count",
    "referral_exists",
    "referral_page",
    "referrals_by_id",
    "release_claim",
    "restore",
    "revoke_releases",
    "rotate",
    "schema_state",
    "sqlite_file",
    "sqlite_path",
    "staged_restore",
    "status_lines",
    "thank_you_facts",
    "thanked_about",
    "unconfirmed_due",
    "update_follow_ups",
    "upsert_referrals",
    "upsert_visits",
    "visit_count",
    "visit_page",
    "write_cursor",
    "write_meta",
    "write_source_state",
]
