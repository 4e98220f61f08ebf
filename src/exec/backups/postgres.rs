//! PostgreSQL backups: `pg_dump -Fc` files. A dump is read without a server by `pg_restore -f -`
//! (which reads it whole: a truncated file fails), counting the rows of each table's `COPY`
//! block and the version in `schema_migrations`'s. A restore goes into a fresh database
//! `<db>_restore_<unix>`, is verified there, and only then replaces the live one by renaming,
//! in one transaction, after its sessions are closed; the old database is kept as
//! `<db>_before_restore_<unix>`.

use super::manifest::{application_rows, check_file, check_tables, unix_now, Manifest};
use super::sqlite::Inspection;
use super::{RestoreError, Restored};
use crate::durable::{self, Temporary};
use ::postgres::config::Host;
use ::postgres::{Client, Config, NoTls};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Where the PostgreSQL tools are looked for when they are not on `PATH`.
pub const FALLBACK_BIN: &str = "/usr/lib/postgresql/15/bin";

/// How long to wait for the old database's sessions to end.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL tool (`pg_dump`, `pg_restore`): from `PATH`, else [`FALLBACK_BIN`].
pub fn tool(name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    Path::new(FALLBACK_BIN).join(name)
}

fn config(url: &str) -> Result<Config, String> {
    let mut config = Config::from_str(url).map_err(|e| {
        format!(
            "{}: not a PostgreSQL URL: {e}",
            crate::exec::migrations::postgres::redact(url)
        )
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    Ok(config)
}

/// The database a URL names (default: the user's name).
fn dbname(config: &Config) -> String {
    config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres")
        .to_owned()
}

fn connect(config: &Config, database: &str) -> Result<Client, String> {
    let mut config = config.clone();
    config.dbname(database);
    config
        .connect(NoTls)
        .map_err(|e| format!("database {database} could not be reached: {e}"))
}

/// A `pg_dump`/`pg_restore` command connecting as `config` says, to `database`.
fn command(name: &str, config: &Config, database: &str) -> Command {
    let mut cmd = Command::new(tool(name));
    if let Some(host) = config.get_hosts().first() {
        match host {
            Host::Tcp(h) => cmd.arg("-h").arg(h),
            Host::Unix(path) => cmd.arg("-h").arg(path),
        };
    }
    if let Some(port) = config.get_ports().first() {
        cmd.arg("-p").arg(port.to_string());
    }
    if let Some(user) = config.get_user() {
        cmd.arg("-U").arg(user);
    }
    if let Some(password) = config.get_password() {
        cmd.env("PGPASSWORD", String::from_utf8_lossy(password).into_owned());
    }
    cmd.env("PGCONNECT_TIMEOUT", "5")
        .arg("-w")
        .arg("-d")
        .arg(database);
    cmd
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The last lines of a tool's stderr, on one line.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    lines[start..].join(" / ")
}

/// Reads a dump whole without a server: rows per table (`schema.table`) from its `COPY` blocks
/// and the version in `schema_migrations`.
///
/// # Errors
/// The file is not a custom-format dump, or is truncated or damaged: what `pg_restore` said.
pub fn scan(path: &Path) -> Result<Inspection, String> {
    if !path.is_file() {
        return Err(format!("{}: no such file", path.display()));
    }
    let mut child = Command::new(tool("pg_restore"))
        .arg("-f")
        .arg("-")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("pg_restore could not be started: {e}"))?;
    let mut stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut tables = BTreeMap::new();
    let mut version: Option<u64> = None;
    let mut reader = BufReader::with_capacity(1 << 20, child.stdout.take().expect("piped"));
    let mut line = Vec::new();
    let mut current: Option<(String, u64)> = None;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        match &mut current {
            Some((table, rows)) => {
                if line == b"\\." {
                    let bare = table.rsplit('.').next().unwrap_or(table);
                    if bare.trim_matches('"') == "schema_migrations" && version.is_none() {
                        version = Some(0);
                    }
                    tables.insert(std::mem::take(table), *rows);
                    current = None;
                } else {
                    *rows += 1;
                    let bare = table.rsplit('.').next().unwrap_or(table);
                    if bare.trim_matches('"') == "schema_migrations" {
                        let first = line.split(|b| *b == b'\t').next().unwrap_or(b"");
                        if let Some(v) = std::str::from_utf8(first)
                            .ok()
                            .and_then(|s| s.parse::<i64>().ok())
                        {
                            version = Some(version.unwrap_or(0).max(v.max(0) as u64));
                        }
                    }
                }
            }
            None => {
                if let Some(rest) = line.strip_prefix(b"COPY ") {
                    if line.ends_with(b"FROM stdin;") {
                        let rest = String::from_utf8_lossy(rest);
                        let end = rest.find(" (").or_else(|| rest.find(" FROM stdin;"));
                        let table = rest[..end.unwrap_or(rest.len())].trim().to_owned();
                        current = Some((table, 0));
                    }
                }
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("pg_restore could not be waited for: {e}"))?;
    let errors = errors.join().unwrap_or_default();
    if !status.success() || current.is_some() {
        return Err(format!(
            "{}: not a complete pg_dump -Fc archive: pg_restore said: {}",
            path.display(),
            if errors.trim().is_empty() {
                format!("{status}")
            } else {
                tail(&errors)
            }
        ));
    }
    Ok(Inspection {
        schema_version: version.unwrap_or(0),
        tables,
    })
}

/// Rows per table (`schema.table`, quoted as PostgreSQL quotes identifiers) and the version in
/// `schema_migrations` (`None`: no such table).
fn inspect_live(client: &mut Client) -> Result<(BTreeMap<String, u64>, Option<u64>), String> {
    let rows = client
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'",
            &[],
        )
        .map_err(|e| format!("reading its tables: {e}"))?;
    let mut tables = BTreeMap::new();
    for row in rows {
        let table: String = row.get(0);
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM ONLY {table}"), &[])
            .map_err(|e| format!("counting the rows of {table}: {e}"))?
            .get(0);
        tables.insert(table, n as u64);
    }
    let version = match client
        .query_one("SELECT to_regclass('schema_migrations')::text", &[])
        .map_err(|e| format!("looking for schema_migrations: {e}"))?
        .get::<_, Option<String>>(0)
    {
        None => None,
        Some(_) => Some(
            client
                .query_one("SELECT max(version)::bigint FROM schema_migrations", &[])
                .map_err(|e| format!("reading schema_migrations: {e}"))?
                .get::<_, Option<i64>>(0)
                .unwrap_or(0)
                .max(0) as u64,
        ),
    };
    Ok((tables, version))
}

/// The version the live database's `schema_migrations` says (0 when none).
///
/// # Errors
/// The database cannot be reached or read.
pub fn live_version(url: &str) -> Result<u64, String> {
    let config = config(url)?;
    let name = dbname(&config);
    let mut client = connect(&config, &name)?;
    inspect_live(&mut client)
        .map(|(_, v)| v.unwrap_or(0))
        .map_err(|e| format!("database {name}: {e}"))
}

/// Runs `pg_restore` into `database`, reporting tables done of `total` from its `--verbose`.
fn run_pg_restore(
    path: &Path,
    config: &Config,
    database: &str,
    total: u64,
    report: &mut dyn FnMut(u64, u64),
) -> Result<(), String> {
    let mut child = command("pg_restore", config, database)
        .args(["--exit-on-error", "--verbose"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("pg_restore could not be started: {e}"))?;
    let stderr = BufReader::new(child.stderr.take().expect("piped"));
    let mut done = 0;
    let mut said = String::new();
    report(0, total);
    for line in stderr.lines().map_while(Result::ok) {
        if line.contains("processing data for table") {
            if done > 0 {
                report(done.min(total), total);
            }
            done += 1;
        } else if !line.starts_with("pg_restore: creating")
            && !line.starts_with("pg_restore: connecting")
            && !line.starts_with("pg_restore: executing")
        {
            said.push_str(&line);
            said.push('\n');
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("pg_restore could not be waited for: {e}"))?;
    if status.success() {
        report(total, total);
        Ok(())
    } else {
        Err(format!("pg_restore failed ({status}): {}", tail(&said)))
    }
}

/// A database name of at most 63 bytes: `base` cut to fit before `suffix`.
fn db_name(base: &str, suffix: &str) -> String {
    let room = 63usize.saturating_sub(suffix.len());
    let mut cut = base.len().min(room);
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &base[..cut])
}

/// Restores the dump at `backup` into the live database at `url`: the dump checked first (its
/// manifest's checksum, else read whole), restored into `<db>_restore_<unix>` and verified there
/// (rows per table, `schema_migrations` present), then swapped in by renaming; the old database
/// is kept as `<db>_before_restore_<unix>` ([`Restored::kept`]). `report` gets tables done of
/// total.
///
/// # Errors
/// [`RestoreError::Refused`] when the dump fails its checks, [`RestoreError::NothingChanged`]
/// when a later step fails (the fresh database is dropped, the live one left as it was).
pub fn restore(
    backup: &Path,
    manifest: Option<&Manifest>,
    url: &str,
    report: &mut dyn FnMut(u64, u64),
) -> Result<Restored, RestoreError> {
    let started = Instant::now();
    let name = super::stem(backup);
    let expected = match manifest {
        Some(m) => {
            check_file(backup, m).map_err(RestoreError::Refused)?;
            Inspection {
                schema_version: m.schema_version,
                tables: m.tables.clone(),
            }
        }
        None => scan(backup).map_err(RestoreError::Refused)?,
    };
    let total = expected.tables.len() as u64;
    let config = config(url).map_err(RestoreError::NothingChanged)?;
    let live = dbname(&config);
    let now = unix_now();
    let fresh = db_name(&live, &format!("_restore_{now}"));
    let kept = db_name(&live, &format!("_before_restore_{now}"));
    let mut admin = connect(&config, "postgres").map_err(RestoreError::NothingChanged)?;
    let owner: Option<String> = admin
        .query_opt(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
            &[&live],
        )
        .map_err(|e| RestoreError::NothingChanged(format!("reading database {live}: {e}")))?
        .map(|r| r.get(0));
    let Some(owner) = owner else {
        return Err(RestoreError::NothingChanged(format!(
            "database {live} does not exist on the server"
        )));
    };
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0 OWNER {}",
            quote(&fresh),
            quote(&owner)
        ))
        .map_err(|e| RestoreError::NothingChanged(format!("creating database {fresh}: {e}")))?;
    let drop_fresh = |admin: &mut Client, why: String| match admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {}", quote(&fresh)))
    {
        Ok(()) => RestoreError::NothingChanged(format!("{why} (database {fresh} dropped)")),
        Err(e) => RestoreError::NothingChanged(format!(
            "{why} (database {fresh} could not be dropped: {e})"
        )),
    };
    if let Err(e) = run_pg_restore(backup, &config, &fresh, total, report) {
        return Err(drop_fresh(&mut admin, format!("{}: {e}", backup.display())));
    }
    let checked = connect(&config, &fresh).and_then(|mut client| {
        let (tables, version) =
            inspect_live(&mut client).map_err(|e| format!("database {fresh}: {e}"))?;
        drop(client);
        check_tables(&tables, &expected.tables).map_err(|e| {
            format!(
                "{} restored into {fresh}, but the rows differ from {}: {e}",
                backup.display(),
                if manifest.is_some() {
                    "its manifest"
                } else {
                    "the dump's"
                }
            )
        })?;
        let version = version.ok_or_else(|| {
            format!(
                "{} restored into {fresh} has no schema_migrations table; expected a backup of a database migrated by golang-migrate or this node",
                backup.display()
            )
        })?;
        Ok((tables, version))
    });
    let (tables, version) = match checked {
        Ok(found) => found,
        Err(e) => return Err(drop_fresh(&mut admin, e)),
    };
    if let Err(e) = swap(&mut admin, &live, &fresh, &kept) {
        return Err(drop_fresh(&mut admin, e));
    }
    Ok(Restored {
        backup: name,
        rows: application_rows(&tables),
        schema_version: version,
        tables,
        duration: started.elapsed(),
        kept: Some(kept),
    })
}

/// Closes the live database's sessions and renames it to `kept` and `fresh` to `live`, in one
/// transaction; on failure the live database takes connections again, unchanged.
fn swap(admin: &mut Client, live: &str, fresh: &str, kept: &str) -> Result<(), String> {
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            quote(live)
        ))
        .map_err(|e| format!("closing database {live} to new connections: {e}"))?;
    let result = (|| -> Result<(), String> {
        let deadline = Instant::now() + TERMINATE_TIMEOUT;
        loop {
            let left: i64 = admin
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&live],
                )
                .map_err(|e| format!("closing the sessions of database {live}: {e}"))?
                .get(0);
            if left == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "database {live} still had {left} sessions after {} s",
                    TERMINATE_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut tx = admin
            .transaction()
            .map_err(|e| format!("renaming the databases: {e}"))?;
        tx.batch_execute(&format!(
            "ALTER DATABASE {live_q} RENAME TO {kept_q};
             ALTER DATABASE {fresh_q} RENAME TO {live_q};
             ALTER DATABASE {kept_q} ALLOW_CONNECTIONS true;",
            live_q = quote(live),
            kept_q = quote(kept),
            fresh_q = quote(fresh),
        ))
        .map_err(|e| format!("renaming {live} to {kept} and {fresh} to {live}: {e}"))?;
        tx.commit()
            .map_err(|e| format!("renaming {live} to {kept} and {fresh} to {live}: {e}"))
    })();
    if result.is_err() {
        let _ = admin.batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            quote(live)
        ));
    }
    result
}

/// Takes a backup of the live database at `url` with `pg_dump -Fc` into `dir/NAME.dump`, reads
/// it back whole for its manifest, and writes the manifest.
///
/// # Errors
/// `pg_dump` fails or the directory cannot be written.
pub fn take(dir: &Path, url: &str, name: &str, why: &str) -> Result<Manifest, String> {
    let config = config(url)?;
    let database = dbname(&config);
    let file = format!("{name}.dump");
    let path = dir.join(&file);
    let temporary = Temporary::named(&path, &format!(".{file}.tmp"));
    let inspection = durable::replace_with(
        temporary,
        |tmp| -> Result<Inspection, String> {
            let out = command("pg_dump", &config, &database)
                .arg("-Fc")
                .arg("-f")
                .arg(tmp)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("pg_dump could not be started: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "pg_dump of database {database} failed ({}): {}",
                    out.status,
                    tail(&String::from_utf8_lossy(&out.stderr))
                ));
            }
            scan(tmp)
        },
        |e| match e.step {
            durable::Step::Sync => format!("{}: cannot be synced: {}", e.path.display(), e.source),
            _ => format!("{}: cannot be written: {}", e.path.display(), e.source),
        },
    )?;
    Manifest::record(
        dir,
        name,
        file,
        &path,
        why,
        inspection.schema_version,
        inspection.tables,
    )
}
