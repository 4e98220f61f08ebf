//! The store's schema and the SQL text it is written with.
//!
//! Behind PgBouncer in transaction-pooling mode a session belongs to the pooler, so nothing here
//! relies on one: no named prepared statements (parameters go through `query_typed`, whose
//! statement is unnamed, or are written as literals into one simple query), no session `SET`,
//! no session advisory locks (creation is serialised by a transaction-scoped one), no
//! LISTEN/NOTIFY.

/// The schema every table lives in.
pub const SCHEMA: &str = "rollback_node";

/// The store format this build writes and reads; a store of a higher format is refused.
pub const FORMAT: u32 = 1;

/// The key of the transaction-scoped advisory lock that serialises creating the schema.
const CREATE_LOCK: i64 = 0x726f_6c6c_6261_636b;

/// The SQLSTATE a fenced commit raises when its lease is no longer held.
pub const LEASE_LOST: &str = "RBN01";

/// Creates the schema if it is missing (safe when several nodes start at the same moment: one
/// transaction, serialised by a transaction-scoped advisory lock).
pub fn create() -> String {
    format!(
        "BEGIN;
SELECT pg_advisory_xact_lock({CREATE_LOCK});
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS {SCHEMA}.lease (
  id int PRIMARY KEY CHECK (id = 1),
  holder text,
  epoch bigint NOT NULL,
  expires_at timestamptz NOT NULL);
INSERT INTO {SCHEMA}.lease VALUES (1, NULL, 0, '-infinity') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS {SCHEMA}.nodes (
  id text PRIMARY KEY,
  incarnation text NOT NULL,
  started_at timestamptz NOT NULL,
  seen_at timestamptz NOT NULL);
CREATE SEQUENCE IF NOT EXISTS {SCHEMA}.history_seq;
CREATE TABLE IF NOT EXISTS {SCHEMA}.journal (
  seq bigint PRIMARY KEY,
  epoch bigint NOT NULL,
  src text NOT NULL,
  msg_id bigint NOT NULL,
  accepted boolean NOT NULL,
  request text NOT NULL,
  operation text,
  outcome text,
  reply text,
  hseq bigint UNIQUE);
CREATE TABLE IF NOT EXISTS {SCHEMA}.snapshot (
  id int PRIMARY KEY CHECK (id = 1),
  seq bigint NOT NULL,
  body text NOT NULL);
CREATE TABLE IF NOT EXISTS {SCHEMA}.inbox (
  seq bigserial PRIMARY KEY,
  node text NOT NULL,
  src text NOT NULL,
  msg_id bigint NOT NULL,
  body text NOT NULL,
  reply text,
  at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX IF NOT EXISTS inbox_unanswered ON {SCHEMA}.inbox (seq) WHERE reply IS NULL;
CREATE TABLE IF NOT EXISTS {SCHEMA}.flags (
  hseq bigint PRIMARY KEY DEFAULT nextval('{SCHEMA}.history_seq'),
  src text NOT NULL,
  msg_id bigint NOT NULL,
  node text NOT NULL,
  flag text NOT NULL,
  enabled boolean NOT NULL,
  UNIQUE (src, msg_id));
CREATE TABLE IF NOT EXISTS {SCHEMA}.flag_state (
  flag text PRIMARY KEY,
  enabled boolean NOT NULL,
  hseq bigint NOT NULL);
CREATE TABLE IF NOT EXISTS {SCHEMA}.status (
  id int PRIMARY KEY CHECK (id = 1),
  epoch bigint NOT NULL,
  body text NOT NULL);
CREATE OR REPLACE FUNCTION {SCHEMA}.hold(e bigint, me text) RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
  PERFORM 1 FROM {SCHEMA}.lease
    WHERE id = 1 AND epoch = e AND holder = me AND expires_at > clock_timestamp() FOR SHARE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'the lease of epoch % is no longer held by %', e, me USING ERRCODE = '{LEASE_LOST}';
  END IF;
END $f$;
INSERT INTO {SCHEMA}.meta VALUES ('format', '{FORMAT}') ON CONFLICT DO NOTHING;
COMMIT;"
    )
}

/// `text` as an SQL string literal (standard-conforming strings, PostgreSQL's default: only `'`
/// is doubled). A NUL, which PostgreSQL text cannot hold, becomes U+FFFD.
pub fn lit(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\0' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// An optional text as a literal or `NULL`.
pub fn opt(text: Option<&str>) -> String {
    text.map_or_else(|| "NULL".to_owned(), lit)
}

/// The statement that holds the lease of `epoch` for `node` through the transaction, or aborts
/// it.
pub fn hold(epoch: u64, node: &str) -> String {
    format!("SELECT {SCHEMA}.hold({epoch}, {})", lit(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_double_quotes_and_replace_nul() {
        assert_eq!(lit("it's"), "'it''s'");
        assert_eq!(lit("a\0b"), "'a\u{fffd}b'");
        assert_eq!(opt(None), "NULL");
        assert_eq!(opt(Some("x")), "'x'");
    }
}
