//! Migrations: the SQL files under `migrations/`, compiled in, applied in
//! order, each once, in its own transaction, recorded with a checksum so
//! that an edited file is refused rather than silently diverging.

use postgres::Client;

use crate::error::{commit, statement, PgError};

/// (number, name, SQL), in order.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_vault.sql",
        include_str!("../migrations/0001_vault.sql"),
    ),
    (
        2,
        "0002_state_changes.sql",
        include_str!("../migrations/0002_state_changes.sql"),
    ),
];

/// FNV-1a over the file: enough to notice an edit (not a security check).
fn checksum(sql: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sql.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Apply every migration not applied yet; the numbers applied now.
pub fn migrate(client: &mut Client) -> Result<Vec<i32>, PgError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text    NOT NULL,
                 checksum   bigint  NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .map_err(statement("create schema_migrations"))?;
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        let mut tx = client.transaction().map_err(statement("begin"))?;
        // One migrator at a time: two nodes starting together must not
        // both apply the same file.
        tx.batch_execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")
            .map_err(statement("lock schema_migrations"))?;
        let row = tx
            .query_opt(
                "SELECT checksum FROM schema_migrations WHERE version = $1",
                &[&version],
            )
            .map_err(statement("read schema_migrations"))?;
        match row {
            Some(r) => {
                let stored: i64 = r.get(0);
                if stored != checksum(sql) {
                    return Err(PgError::Migration(
                        version,
                        format!("{name} differs from the one applied (checksum)"),
                    ));
                }
            }
            None => {
                tx.batch_execute(sql)
                    .map_err(statement("apply migration"))?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    &[&version, &name, &checksum(sql)],
                )
                .map_err(statement("record migration"))?;
                applied.push(version);
            }
        }
        tx.commit().map_err(commit("commit migration"))?;
    }
    Ok(applied)
}

/// The migrations applied so far: (number, name).
pub fn applied(client: &mut Client) -> Result<Vec<(i32, String)>, PgError> {
    let rows = client
        .query(
            "SELECT version, name FROM schema_migrations ORDER BY version",
            &[],
        )
        .map_err(statement("read schema_migrations"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
