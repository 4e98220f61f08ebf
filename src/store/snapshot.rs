//! Snapshots of a state directory's machine, in `DIR/snapshot.json`: a CRC-32 line, then the
//! snapshot as JSON. A snapshot is taken right after a commit (so it holds only what the journal
//! holds) and written by a thread of its own — written to a temporary file, fsynced, renamed over
//! the old one, the directory fsynced — so the node never waits for it and a crash leaves the old
//! snapshot or the new one, never half of one. At start the journal is replayed from the
//! snapshot's sequence number on; a snapshot that is missing, damaged or ahead of the journal is
//! not used.

use crate::core::machine::{Snapshot, SnapshotOut};
use crate::durable::{self, Temporary};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread;

/// The snapshot file inside a state directory.
pub const FILE_NAME: &str = "snapshot.json";
/// The temporary file a snapshot is written to before it is renamed over [`FILE_NAME`]; one a
/// crash left behind is removed at the next start.
pub const TEMPORARY_NAME: &str = "snapshot.json.tmp";

/// Writes snapshots in the background, one at a time; a snapshot taken while the previous one
/// is still being written replaces it in the queue (only the newest matters).
#[derive(Debug)]
pub struct SnapshotWriter {
    queue: SyncSender<SnapshotOut>,
    failures: Receiver<String>,
}

impl SnapshotWriter {
    /// A writer for the state directory `dir`.
    pub fn new(dir: &Path) -> Self {
        let (queue, snapshots) = mpsc::sync_channel::<SnapshotOut>(1);
        let (report, failures) = mpsc::channel();
        let dir = dir.to_owned();
        thread::spawn(move || {
            for snapshot in snapshots {
                if let Err(e) = write(&dir, &snapshot) {
                    let _ = report.send(e);
                }
            }
        });
        SnapshotWriter { queue, failures }
    }

    /// Hands a snapshot to the writer; if one is still waiting to be written, this one is
    /// dropped (the next will be newer still).
    pub fn submit(&self, snapshot: SnapshotOut) {
        let _ = self.queue.try_send(snapshot);
    }

    /// A failure of an earlier write, if any (for stderr: the journal is intact, start-up will
    /// only replay more of it).
    pub fn failure(&self) -> Option<String> {
        self.failures.try_recv().ok()
    }
}

fn write(dir: &Path, snapshot: &SnapshotOut) -> Result<String, String> {
    let data = snapshot.to_json().map_err(|e| e.to_string())?;
    let path = dir.join(FILE_NAME);
    let mut text = format!("{:08x}\n", crc32fast::hash(&data)).into_bytes();
    text.extend_from_slice(&data);
    durable::write(Temporary::named(&path, TEMPORARY_NAME), &text)
        .map(|()| path.display().to_string())
        .map_err(|e| format!("{}: cannot write a snapshot: {}", path.display(), e.source))
}

/// Reads the snapshot of `dir`: `Ok(None)` when there is none.
///
/// # Errors
/// The snapshot is unreadable or damaged (its checksum fails, or it does not decode).
pub fn read(dir: &Path) -> Result<Option<Snapshot>, String> {
    let path: PathBuf = dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
        return Err("it has no checksum line".to_owned());
    };
    let (header, data) = (&bytes[..newline], &bytes[newline + 1..]);
    let expected = std::str::from_utf8(header)
        .ok()
        .and_then(|h| u32::from_str_radix(h.trim(), 16).ok())
        .ok_or("its checksum line is not a checksum")?;
    if crc32fast::hash(data) != expected {
        return Err("it fails its checksum".to_owned());
    }
    serde_json::from_slice(data)
        .map(Some)
        .map_err(|e| format!("it does not decode ({e})"))
}
