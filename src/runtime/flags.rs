//! The node's flags as readers outside the owner thread see them (the OFREP server): a
//! [`FlagsView`] the session publishes to after each change, before the change's reply goes
//! out, with an `ETag` that depends only on the flags.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// The node's flags as the OFREP server sees them: a cheap, shared handle. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct FlagsView {
    inner: Arc<RwLock<Snapshot>>,
}

#[derive(Debug, Default)]
struct Snapshot {
    flags: Arc<BTreeMap<String, bool>>,
    version: u64,
    etag: String,
}

impl FlagsView {
    /// A view holding `flags` at version 0.
    pub fn new(flags: BTreeMap<String, bool>) -> Self {
        let view = FlagsView::default();
        view.publish(flags);
        view
    }

    /// Replaces the flags (call after each durable change). Returns the version: it goes up by
    /// one when the flags differ from the previous ones, and stays otherwise.
    pub fn publish(&self, flags: BTreeMap<String, bool>) -> u64 {
        let mut snapshot = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if *snapshot.flags == flags && !snapshot.etag.is_empty() {
            return snapshot.version;
        }
        if !snapshot.etag.is_empty() {
            snapshot.version += 1;
        }
        snapshot.etag = etag(&flags);
        snapshot.flags = Arc::new(flags);
        snapshot.version
    }

    /// The flags now and their version.
    pub fn get(&self) -> (Arc<BTreeMap<String, bool>>, u64) {
        let snapshot = self.inner.read().unwrap_or_else(|p| p.into_inner());
        (snapshot.flags.clone(), snapshot.version)
    }

    /// The bulk response's `ETag` now (quoted). It depends only on the flags, so it survives a
    /// restart of the node.
    pub fn etag(&self) -> String {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .etag
            .clone()
    }

    /// The flags now and the bulk response's `ETag`, read together.
    pub fn snapshot(&self) -> (Arc<BTreeMap<String, bool>>, String) {
        let snapshot = self.inner.read().unwrap_or_else(|p| p.into_inner());
        (snapshot.flags.clone(), snapshot.etag.clone())
    }
}

/// A quoted FNV-1a hash of the flags.
fn etag(flags: &BTreeMap<String, bool>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (key, value) in flags {
        for byte in key.bytes().chain([0, u8::from(*value), 0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("\"{hash:016x}\"")
}
