//! Choosing and starting the executor of each layer from an estate: the simulated world for the
//! layers it simulates, and for the layers it names real systems of — `[schema]`, `[flagd]`,
//! `[haproxy]` — a connection to each, read once at start. What the real systems say then is the
//! truth the node starts from.

use crate::core::effects::Found;
use crate::core::estate::Estate;
use crate::exec::backups::RealBackups;
use crate::exec::flagd::FlagFile;
use crate::exec::haproxy::Haproxy;
use crate::exec::migrations::executor::Migrations;
use crate::exec::simulated::Simulated;
use crate::exec::{Executors, LaneExecutor};
use std::path::{Path, PathBuf};

/// `path` as written in an estate file in `base`: relative paths are relative to the file.
pub fn resolve(base: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

/// A database URL as written in an estate file in `base`: a relative `sqlite:` path is
/// relative to the file.
pub fn resolve_url(base: &Path, url: &str) -> String {
    match url.strip_prefix("sqlite:") {
        Some(path) if !path.starts_with('/') && !path.starts_with("//") => {
            format!("sqlite:{}", resolve(base, path).display())
        }
        _ => url.to_owned(),
    }
}

/// The executors of `estate` (paths relative to `base`, simulated effects at `pace`), and what
/// its real systems say at start.
///
/// # Errors
/// One line naming the system that cannot be used (a missing migrations directory, a database
/// that cannot be reached, a flag file that is not flagd's JSON, a socket that is not an admin
/// socket, a backend without blue and green) and what would be right.
pub fn connect(estate: &Estate, base: &Path, pace: f64) -> Result<(Executors, Found), String> {
    let simulated = Simulated::new(estate.costs.clone(), &estate.state, pace);
    let mut found = Found::default();
    let schema: Box<dyn crate::exec::Schema> = match &estate.systems.schema {
        Some(system) => {
            let url = resolve_url(base, &system.database);
            let directory = resolve(base, &system.migrations);
            let (migrations, seen) = Migrations::open(&url, &directory)?;
            found.schema_version = seen.schema_version;
            found.schema_health = seen.schema_health;
            found.catalogue = seen.catalogue;
            Box::new(migrations)
        }
        None => Box::new(simulated.clone()),
    };
    let mut lister = None;
    let backups: Box<dyn crate::exec::Backups> =
        match (&estate.systems.backups, &estate.systems.schema) {
            (Some(dir), Some(system)) => {
                let backups = RealBackups::open(
                    &resolve(base, dir),
                    &resolve_url(base, &system.database),
                    Some(&resolve(base, &system.migrations)),
                )?
                .keeping(estate.systems.keep_backups);
                found.backups = backups.observe_backups();
                lister = Some(backups.lister());
                Box::new(backups)
            }
            _ => Box::new(simulated.clone()),
        };
    let flags: Box<dyn crate::exec::Flags> = match &estate.systems.flagd {
        Some(file) => {
            let file = FlagFile::open(resolve(base, file), &estate.state.flags)
                .map_err(|e| e.to_string())?;
            found.flags = Some(file.read().map_err(|e| e.to_string())?);
            Box::new(file)
        }
        None => Box::new(simulated.clone()),
    };
    let traffic: Box<dyn crate::exec::Traffic> = match &estate.systems.haproxy {
        Some(system) => {
            let haproxy = Haproxy::connect(resolve(base, &system.socket), &system.backend)
                .map_err(|e| e.to_string())?;
            let seen = haproxy.found().map_err(|e| e.to_string())?;
            found.live_environment = seen.live_environment;
            found.health = seen.health;
            Box::new(haproxy)
        }
        None => Box::new(simulated.clone()),
    };
    let mut executors = Executors::new(
        LaneExecutor::Schema { schema, backups },
        LaneExecutor::Traffic(traffic),
        LaneExecutor::Flags(flags),
    );
    if let Some(lister) = lister {
        executors = executors.with_backups_lister(lister);
    }
    Ok((executors, found))
}
