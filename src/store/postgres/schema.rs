//! The PostgreSQL schema: its canonical form, its numbered migrations (embedded in the
//! binary), `ghostkey db migrate`, and the version check every node makes at start.

use super::{get, PgOptions, PgStore, Tx};
use crate::store::StoreError;

/// The canonical schema (the repository's `schema.postgres.sql`): what a fresh migration
/// must create, exactly (a test compares them).
pub const SCHEMA_SQL: &str = include_str!("../../../schema.postgres.sql");

/// The schema version this build serves. PostgreSQL versions are numbered apart from
/// SQLite's.
pub const SCHEMA_VERSION: i32 = 1;

/// Every migration, in order: version N is reached by running `MIGRATIONS[N - 1]`.
/// Version 1 creates everything (it also creates `ghostkey_schema`).
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../migrations/postgres/v1.sql"))];

/// The database's schema version; `None` when it has no Ghostkey schema yet.
fn current_version(tx: &Tx<'_>, for_update: bool) -> Result<Option<i32>, StoreError> {
    let exists = tx.one("SELECT to_regclass('ghostkey_schema') IS NOT NULL", &[])?;
    if !get::<bool>(&exists, 0)? {
        return Ok(None);
    }
    let sql = if for_update {
        "SELECT version FROM ghostkey_schema WHERE id = 1 FOR UPDATE"
    } else {
        "SELECT version FROM ghostkey_schema WHERE id = 1"
    };
    match tx.opt(sql, &[])? {
        Some(row) => Ok(Some(get(&row, 0)?)),
        None => Err(StoreError::Backend(
            "the ghostkey_schema table has no version row".into(),
        )),
    }
}

/// Refuses a database whose schema this build does not serve, saying what to do.
pub(super) fn check_version(store: &PgStore) -> Result<(), StoreError> {
    let version = store.read(|tx| current_version(tx, false))?;
    match version {
        Some(SCHEMA_VERSION) => Ok(()),
        None => Err(StoreError::Backend(
            "the PostgreSQL database has no Ghostkey schema yet: run `ghostkey db migrate` \
             (with the same configuration) first"
                .into(),
        )),
        Some(v) if v < SCHEMA_VERSION => Err(StoreError::Backend(format!(
            "the PostgreSQL database has Ghostkey schema version {v}, and this build serves \
             version {SCHEMA_VERSION}: run `ghostkey db migrate` (with this build) first"
        ))),
        Some(v) => Err(StoreError::Backend(format!(
            "the PostgreSQL database has Ghostkey schema version {v}, newer than this build's \
             {SCHEMA_VERSION}: it was upgraded by a newer Ghostkey; run that version"
        ))),
    }
}

/// Creates the schema on an empty database or upgrades an older one, in one transaction
/// (PostgreSQL's DDL is transactional: a failed migration leaves the database as it was).
/// Returns the versions before and after. Two nodes migrating at once: the version row's
/// lock orders upgrades; of two creations of a fresh schema one fails and can be re-run.
pub fn migrate(options: &PgOptions) -> Result<(Option<i32>, i32), StoreError> {
    let store = PgStore::connect(options)?;
    store.write(|tx| {
        let from = current_version(tx, true)?;
        let start = from.unwrap_or(0);
        if start > SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "the database has Ghostkey schema version {start}, newer than this build's \
                 {SCHEMA_VERSION}: it was upgraded by a newer Ghostkey"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > start) {
            tx.batch(sql)?;
            tx.exec(
                "UPDATE ghostkey_schema SET version = $1 WHERE id = 1",
                &[version],
            )?;
        }
        Ok((from, SCHEMA_VERSION))
    })
}
