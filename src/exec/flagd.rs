//! The flagd flag-definition file that the kill switch drives.
//!
//! flagd and the OpenFeature flagd providers in file mode read a JSON file of the shape
//! `{"$schema": …, "flags": {"key": {"state", "variants", "defaultVariant", "targeting",
//! "metadata"}}, "$evaluators": …, "metadata": …}`. [`FlagFile`] keeps such a file:
//!
//! - the file on disk is the truth: every [`FlagFile::read`] and [`FlagFile::set`] re-reads it;
//! - every change is a read-modify-write of one flag, spliced into the text as it is on disk, so
//!   other flags, `$evaluators`, unknown top-level keys and their formatting stay byte for byte;
//! - writes are atomic and durable (temporary file in the same directory, fsync, rename over,
//!   fsync of the directory) and [`FlagFile::set`] returns only then, with the measured duration;
//! - each new version gets a modification time strictly later than the previous one, because
//!   polling providers (the Python flagd provider compares mtimes) would otherwise miss a change
//!   made within one tick of the kernel's coarse file clock.
//!
//! Key order is kept without serde_json's `preserve_order` feature: a rewritten flag is rendered in
//! the key order of its previous text, with the file's indentation.
//!
//! # The kill switch
//! flagd's `"state": "DISABLED"` makes the providers return the *code default*, which is not a kill
//! switch: an application that coded `true` as its default would keep the feature on. Disabling a
//! flag here makes it resolve to a `false` variant for everyone instead:
//! `"state": "ENABLED"`, `defaultVariant` names a variant whose value is `false` (an `"off": false`
//! variant is added if there is none) and `targeting` is removed (targeting overrides the default
//! variant). The flag's previous text is stashed, verbatim, as a string in its `metadata` under
//! [`STASH_KEY`] (flagd's flag metadata values must be strings, numbers or booleans, and the
//! providers refuse unknown keys in a flag object). Enabling restores that text exactly; if someone
//! edited the flag by hand while it was disabled, enabling restores the previous `state`,
//! `defaultVariant` and `targeting` and keeps the other edits.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::durable::{self, Temporary};

/// The flag-metadata key under which a disabled flag keeps its previous text (a JSON string).
pub const STASH_KEY: &str = "rollbackNode.killSwitch.previous";

/// The `$schema` written into a new flag file.
pub const SCHEMA_URL: &str = "https://flagd.dev/schema/v0/flags.json";

/// How many times [`FlagFile::set`] re-reads the file when it changed on disk during a write.
const ATTEMPTS: usize = 3;

/// The least step between the modification times of two successive versions of the file.
const MTIME_STEP: Duration = Duration::from_millis(1);

/// The keys a flag object may have (the flagd providers refuse others).
const FLAG_KEYS: [&str; 7] = [
    "state",
    "variants",
    "defaultVariant",
    "targeting",
    "metadata",
    "source",
    "selector",
];

/// Why the flag file could not be read or written. Each message is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum FlagdError {
    /// The operating system refused an operation on the file or its directory.
    #[error("{}: cannot {what}: {source}", .path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What was being done, e.g. `read the flag file`.
        what: &'static str,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The file is not valid JSON.
    #[error("{}: not valid JSON: {message}", .path.display())]
    NotJson {
        /// The flag file.
        path: PathBuf,
        /// serde_json's message, with line and column.
        message: String,
    },
    /// The file is JSON but not a flag file the flagd providers would load.
    #[error("{}: not a flagd flag file: {problem}", .path.display())]
    Shape {
        /// The flag file.
        path: PathBuf,
        /// What is wrong, naming the flag or key.
        problem: String,
    },
    /// No flag of that key in the file.
    #[error("{}: no flag {flag:?}; the file has: {}", .path.display(), .known.join(", "))]
    UnknownFlag {
        /// The flag file.
        path: PathBuf,
        /// The key asked for.
        flag: String,
        /// The keys the file has.
        known: Vec<String>,
    },
    /// The flag's variants are not booleans, so there is no on/off to switch.
    #[error("{}: flag {flag:?} has non-boolean variants; the kill switch drives boolean flags only", .path.display())]
    NotBoolean {
        /// The flag file.
        path: PathBuf,
        /// The flag.
        flag: String,
    },
    /// The file kept changing on disk between reading it and renaming the new version over it.
    #[error("{}: changed on disk during each of {ATTEMPTS} attempts to write flag {flag:?}; nothing written", .path.display())]
    Contended {
        /// The flag file.
        path: PathBuf,
        /// The flag.
        flag: String,
    },
}

/// What [`FlagFile::set`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReport {
    /// The flag.
    pub flag: String,
    /// Its state now: `true` enabled, `false` killed.
    pub enabled: bool,
    /// Whether the file was rewritten (`false`: the flag already was in that state).
    pub changed: bool,
    /// From the start of the call until the new file was durable (or found unchanged).
    pub duration: Duration,
}

/// A flagd flag file on disk. Cheap to keep; every operation goes to the disk.
#[derive(Debug)]
pub struct FlagFile {
    path: PathBuf,
    added: Vec<String>,
    writing: Mutex<()>,
}

impl FlagFile {
    /// Opens the flag file at `path`.
    ///
    /// If there is no file, it is written from `initial` (boolean flags with variants
    /// `"on": true` / `"off": false`). If there is one, it is the truth for the flags it holds:
    /// it is read and validated, never overwritten when unreadable; flags of `initial` that it
    /// lacks are appended to it (see [`FlagFile::added_on_open`]).
    pub fn open(
        path: impl AsRef<Path>,
        initial: &BTreeMap<String, bool>,
    ) -> Result<Self, FlagdError> {
        let path = path.as_ref().to_path_buf();
        let file = FlagFile {
            path: path.clone(),
            added: Vec::new(),
            writing: Mutex::new(()),
        };
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let text = new_file_text(initial);
                file.write_atomic(&text, None)?;
                return Ok(FlagFile {
                    added: initial.keys().cloned().collect(),
                    ..file
                });
            }
            Err(e) => return Err(io_error(&path, "stat the flag file", e)),
            Ok(_) => {}
        }
        for _ in 0..ATTEMPTS {
            let doc = Doc::load(&path)?;
            let flags = doc.flags();
            let missing: Vec<(&String, &bool)> = initial
                .iter()
                .filter(|(k, _)| !flags.contains_key(k.as_str()))
                .collect();
            if missing.is_empty() {
                return Ok(file);
            }
            let mut text = doc.text.clone();
            for (key, enabled) in &missing {
                let value = Value::Object(boolean_flag(**enabled));
                text = append_flag(&text, key, &value, &[NEW_FLAG_ORDER]);
            }
            if file.write_atomic(&text, Some(&doc.text))? {
                let added = missing.into_iter().map(|(k, _)| k.clone()).collect();
                return Ok(FlagFile { added, ..file });
            }
        }
        Err(FlagdError::Contended {
            path,
            flag: initial.keys().cloned().collect::<Vec<_>>().join(","),
        })
    }

    /// The flags `open` wrote because the file lacked them (all of them if it created the file).
    pub fn added_on_open(&self) -> &[String] {
        &self.added
    }

    /// The path of the flag file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file and gives each boolean flag's effective state for the kill switch:
    /// `true` when its state is `ENABLED`, it is not killed and its `defaultVariant` is a `true`
    /// variant (targeting rules may still serve other values to some contexts). Flags with
    /// non-boolean variants are left out.
    pub fn read(&self) -> Result<BTreeMap<String, bool>, FlagdError> {
        let doc = Doc::load(&self.path)?;
        Ok(doc
            .flags()
            .iter()
            .filter_map(|(key, flag)| {
                let flag = flag.as_object()?;
                is_boolean(flag)
                    .then(|| (key.clone(), resolves_true(flag) && stash(flag).is_none()))
            })
            .collect())
    }

    /// Enables (`true`) or kills (`false`) `flag`: a read-modify-write of the file as it is on disk
    /// now, written atomically. Returns once the change is durable. Setting a flag to the state it
    /// has succeeds and writes nothing.
    pub fn set(&self, flag: &str, enabled: bool) -> Result<WriteReport, FlagdError> {
        let start = Instant::now();
        let _one_writer = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..ATTEMPTS {
            let doc = Doc::load(&self.path)?;
            let flags = doc.flags();
            let Some(current) = flags.get(flag).and_then(Value::as_object) else {
                return Err(FlagdError::UnknownFlag {
                    path: self.path.clone(),
                    flag: flag.to_owned(),
                    known: doc.flag_keys_in_file_order(),
                });
            };
            if !is_boolean(current) {
                return Err(FlagdError::NotBoolean {
                    path: self.path.clone(),
                    flag: flag.to_owned(),
                });
            }
            let span = doc
                .flag_span(flag)
                .ok_or_else(|| self.shape(format!("cannot locate flag {flag:?} in the text")))?;
            let raw = &doc.text[span.clone()];
            let new = if enabled {
                self.enable(flag, current, raw)?
            } else {
                disable(current, raw)
            };
            let replacement = match new {
                NewFlag::Unchanged => {
                    return Ok(WriteReport {
                        flag: flag.to_owned(),
                        enabled,
                        changed: false,
                        duration: start.elapsed(),
                    })
                }
                NewFlag::Text(text) => text,
                NewFlag::Value(value, raws) => {
                    let raws: Vec<&str> = raws.iter().map(String::as_str).collect();
                    render_like(&doc.text, span.start, &Value::Object(value), &raws)
                }
            };
            let text = splice(&doc.text, span, &replacement);
            if self.write_atomic(&text, Some(&doc.text))? {
                return Ok(WriteReport {
                    flag: flag.to_owned(),
                    enabled,
                    changed: true,
                    duration: start.elapsed(),
                });
            }
        }
        Err(FlagdError::Contended {
            path: self.path.clone(),
            flag: flag.to_owned(),
        })
    }

    fn shape(&self, problem: String) -> FlagdError {
        FlagdError::Shape {
            path: self.path.clone(),
            problem,
        }
    }

    /// The flag as it should be once enabled.
    fn enable(
        &self,
        key: &str,
        current: &Map<String, Value>,
        raw: &str,
    ) -> Result<NewFlag, FlagdError> {
        let Some(stashed) = stash(current) else {
            if resolves_true(current) {
                return Ok(NewFlag::Unchanged);
            }
            let mut flag = current.clone();
            flag.insert("state".into(), "ENABLED".into());
            let on = variant_with(&mut flag, true, raw);
            flag.insert("defaultVariant".into(), on.into());
            return Ok(NewFlag::Value(flag, vec![raw.to_owned()]));
        };
        let original: Map<String, Value> = serde_json::from_str(stashed).map_err(|e| {
            self.shape(format!(
                "flag {key:?}: metadata {STASH_KEY:?} is not the JSON text of a flag: {e}"
            ))
        })?;
        let mut flag = current.clone();
        // The variant the kill switch served goes if it was not there before.
        if let Some(Value::String(killed)) = flag.get("defaultVariant").cloned() {
            let had_it = original
                .get("variants")
                .and_then(Value::as_object)
                .is_some_and(|v| v.contains_key(&killed));
            if !had_it {
                if let Some(Value::Object(variants)) = flag.get_mut("variants") {
                    variants.remove(&killed);
                }
            }
        }
        for field in ["state", "defaultVariant", "targeting"] {
            match original.get(field) {
                Some(value) => {
                    flag.insert(field.into(), value.clone());
                }
                None => {
                    flag.remove(field);
                }
            }
        }
        if let Some(Value::Object(metadata)) = flag.get_mut("metadata") {
            metadata.remove(STASH_KEY);
            if metadata.is_empty() && !original.contains_key("metadata") {
                flag.remove("metadata");
            }
        }
        if flag == original {
            Ok(NewFlag::Text(stashed.to_owned()))
        } else {
            Ok(NewFlag::Value(
                flag,
                vec![stashed.to_owned(), raw.to_owned()],
            ))
        }
    }

    /// Writes `text` to a temporary file beside the flag file, fsyncs it and renames it over the
    /// flag file, then fsyncs the directory. With `expected`, the file on disk must still hold
    /// exactly that text just before the rename, else nothing is written and `Ok(false)` returned.
    fn write_atomic(&self, text: &str, expected: Option<&str>) -> Result<bool, FlagdError> {
        let temporary = Temporary::unique(&self.path);
        let dir = temporary.directory().to_path_buf();
        let tmp = temporary.path().to_path_buf();
        let mut file = temporary.create().map_err(|e| {
            io_error(
                &dir,
                "create a temporary file in the flag file's directory",
                e.source,
            )
        })?;
        let mut previous_mtime = None;
        if expected.is_some() {
            let old = fs::metadata(&self.path)
                .map_err(|e| io_error(&self.path, "stat the flag file", e))?;
            file.set_permissions(old.permissions())
                .map_err(|e| io_error(&tmp, "set permissions of", e))?;
            previous_mtime = old.modified().ok();
        }
        file.write_all(text.as_bytes())
            .map_err(|e| io_error(&tmp, "write", e))?;
        // Providers that poll (the Python flagd provider compares `getmtime` with the last one it
        // loaded) miss a change whose mtime equals the previous file's; the kernel's file clock is
        // coarse (milliseconds), so two quick changes can share one. Make each new mtime later.
        if let Some(previous) = previous_mtime {
            let later = previous + MTIME_STEP;
            let mine = file.metadata().and_then(|m| m.modified()).ok();
            if mine.is_none_or(|m| m < later) {
                file.set_modified(later)
                    .map_err(|e| io_error(&tmp, "set the modification time of", e))?;
            }
        }
        temporary
            .sync_file(&file)
            .map_err(|e| io_error(&tmp, "fsync", e.source))?;
        drop(file);
        if let Some(expected) = expected {
            let now = fs::read_to_string(&self.path)
                .map_err(|e| io_error(&self.path, "read the flag file", e))?;
            if now != expected {
                temporary
                    .discard()
                    .map_err(|e| io_error(&tmp, "remove", e))?;
                return Ok(false);
            }
        }
        temporary.install().map_err(|e| match e.step {
            durable::Step::SyncDirectory => {
                io_error(&dir, "fsync the directory of the flag file", e.source)
            }
            _ => io_error(&self.path, "rename the new version over", e.source),
        })?;
        Ok(true)
    }
}

fn io_error(path: &Path, what: &'static str, source: io::Error) -> FlagdError {
    FlagdError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// What a flag becomes.
enum NewFlag {
    /// Already so.
    Unchanged,
    /// This exact text.
    Text(String),
    /// This value, rendered like its surroundings.
    Value(Map<String, Value>, Vec<String>),
}

/// The flag killed: resolves to a `false` variant for everyone; the previous text stashed.
fn disable(current: &Map<String, Value>, raw: &str) -> NewFlag {
    let mut flag = current.clone();
    flag.insert("state".into(), "ENABLED".into());
    let off = variant_with(&mut flag, false, raw);
    flag.insert("defaultVariant".into(), off.into());
    flag.remove("targeting");
    if &flag == current {
        // Already serves `false` to everyone (killed before, or off by hand): nothing to stash.
        return NewFlag::Unchanged;
    }
    if stash(current).is_none() {
        let metadata = flag
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(metadata) = metadata {
            metadata.insert(STASH_KEY.into(), raw.into());
        }
    }
    NewFlag::Value(flag, vec![raw.to_owned()])
}

/// The name of a variant of `flag` whose value is `value`, adding `"on"`/`"off"` (or a free
/// variation of it) if there is none.
fn variant_with(flag: &mut Map<String, Value>, value: bool, raw: &str) -> String {
    let in_file_order: Vec<String> = object_children(raw)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k == "variants")
        .filter_map(|(_, v)| object_children(v))
        .flatten()
        .map(|(k, _)| k)
        .collect();
    let variants = flag
        .entry("variants")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(variants) = variants else {
        unreachable!("validated: variants is an object")
    };
    let has = |name: &String| variants.get(name).and_then(Value::as_bool) == Some(value);
    if let Some(name) = in_file_order.iter().chain(variants.keys()).find(|n| has(n)) {
        return name.clone();
    }
    let base = if value { "on" } else { "off" };
    let mut name = base.to_owned();
    let mut n = 1;
    while variants.contains_key(&name) {
        n += 1;
        name = format!("{base}-{n}");
    }
    variants.insert(name.clone(), value.into());
    name
}

fn stash(flag: &Map<String, Value>) -> Option<&str> {
    flag.get("metadata")?.get(STASH_KEY)?.as_str()
}

fn is_boolean(flag: &Map<String, Value>) -> bool {
    flag.get("variants")
        .and_then(Value::as_object)
        .is_some_and(|v| !v.is_empty() && v.values().all(Value::is_boolean))
}

/// `ENABLED` and the default variant is `true`.
fn resolves_true(flag: &Map<String, Value>) -> bool {
    let enabled = flag.get("state").and_then(Value::as_str) == Some("ENABLED");
    let default = flag
        .get("defaultVariant")
        .and_then(Value::as_str)
        .and_then(|d| flag.get("variants")?.get(d)?.as_bool());
    enabled && default == Some(true)
}

/// The key order of a new flag.
const NEW_FLAG_ORDER: &str =
    r#"{"state": 0, "variants": {"on": 0, "off": 0}, "defaultVariant": 0}"#;

fn boolean_flag(enabled: bool) -> Map<String, Value> {
    let mut variants = Map::new();
    variants.insert("on".into(), true.into());
    variants.insert("off".into(), false.into());
    let mut flag = Map::new();
    flag.insert("state".into(), "ENABLED".into());
    flag.insert("variants".into(), Value::Object(variants));
    flag.insert(
        "defaultVariant".into(),
        if enabled { "on" } else { "off" }.into(),
    );
    flag
}

fn new_file_text(initial: &BTreeMap<String, bool>) -> String {
    let schema = serde_json::to_string(SCHEMA_URL).expect("a string serializes");
    let mut text = format!("{{\n  \"$schema\": {schema},\n  \"flags\": {{}}\n}}\n");
    for (key, enabled) in initial {
        let flag = Value::Object(boolean_flag(*enabled));
        text = append_flag(&text, key, &flag, &[NEW_FLAG_ORDER]);
    }
    text
}

/// The file as read: its text and its parsed, validated value.
struct Doc {
    text: String,
    value: Value,
}

impl Doc {
    fn load(path: &Path) -> Result<Doc, FlagdError> {
        let text = fs::read_to_string(path).map_err(|e| io_error(path, "read the flag file", e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| FlagdError::NotJson {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        validate(&value).map_err(|problem| FlagdError::Shape {
            path: path.to_path_buf(),
            problem,
        })?;
        Ok(Doc { text, value })
    }

    fn flags(&self) -> &Map<String, Value> {
        self.value["flags"]
            .as_object()
            .expect("validated: flags is an object")
    }

    /// The flag keys in the order of the file.
    fn flag_keys_in_file_order(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        let span = flags_object_span(&self.text).unwrap_or(0..0);
        for (key, _) in object_children(&self.text[span]).into_iter().flatten() {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }

    /// The byte range of the value of flag `key` in the text.
    fn flag_span(&self, key: &str) -> Option<Range<usize>> {
        let flags = flags_object_span(&self.text)?;
        last_member(&self.text, flags.start, key).map(|m| m.value)
    }
}

/// Checks what the flagd providers check when they load a file, with a readable message.
fn validate(value: &Value) -> Result<(), String> {
    let top = value
        .as_object()
        .ok_or_else(|| format!("the top level is {}, not an object", kind(value)))?;
    match top.get("flags") {
        None => return Err("no \"flags\" object".into()),
        Some(Value::Array(_)) => return Err(
            "\"flags\" is an array (flagd's import form); the providers read only the object form"
                .into(),
        ),
        Some(Value::Object(_)) => {}
        Some(other) => return Err(format!("\"flags\" is {}, not an object", kind(other))),
    }
    if let Some(evaluators) = top.get("$evaluators") {
        if !evaluators.is_object() {
            return Err(format!(
                "\"$evaluators\" is {}, not an object",
                kind(evaluators)
            ));
        }
    }
    if let Some(metadata) = top.get("metadata") {
        check_metadata(metadata).map_err(|p| format!("top-level \"metadata\": {p}"))?;
    }
    for (key, flag) in top["flags"].as_object().into_iter().flatten() {
        check_flag(flag).map_err(|p| format!("flag {key:?}: {p}"))?;
    }
    Ok(())
}

fn check_flag(flag: &Value) -> Result<(), String> {
    let flag = flag
        .as_object()
        .ok_or_else(|| format!("is {}, not an object", kind(flag)))?;
    if let Some(unknown) = flag.keys().find(|k| !FLAG_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key {unknown:?} (the providers refuse it; allowed: {})",
            FLAG_KEYS.join(", ")
        ));
    }
    match flag.get("state").and_then(Value::as_str) {
        Some("ENABLED" | "DISABLED") => {}
        Some(other) => {
            return Err(format!(
                "\"state\" is {other:?}, not \"ENABLED\" or \"DISABLED\""
            ))
        }
        None => return Err("no \"state\" string".into()),
    }
    let variants = match flag.get("variants") {
        Some(Value::Object(v)) if !v.is_empty() => v,
        Some(Value::Object(_)) => return Err("\"variants\" is empty".into()),
        Some(other) => return Err(format!("\"variants\" is {}, not an object", kind(other))),
        None => return Err("no \"variants\"".into()),
    };
    let first = variants.values().next().map(kind).unwrap_or("nothing");
    if let Some((name, v)) = variants.iter().find(|(_, v)| kind(v) != first) {
        return Err(format!(
            "variants mix types: {name:?} is {}, others {first}",
            kind(v)
        ));
    }
    match flag.get("defaultVariant") {
        None | Some(Value::Null) => {}
        Some(Value::String(d)) if d.is_empty() || variants.contains_key(d) => {}
        Some(Value::String(d)) => {
            return Err(format!(
                "\"defaultVariant\" {d:?} is not one of its variants"
            ))
        }
        Some(other) => {
            return Err(format!(
                "\"defaultVariant\" is {}, not a string",
                kind(other)
            ))
        }
    }
    if let Some(targeting) = flag.get("targeting") {
        if !targeting.is_object() {
            return Err(format!(
                "\"targeting\" is {}, not an object",
                kind(targeting)
            ));
        }
    }
    if let Some(metadata) = flag.get("metadata") {
        check_metadata(metadata).map_err(|p| format!("\"metadata\": {p}"))?;
    }
    Ok(())
}

fn check_metadata(metadata: &Value) -> Result<(), String> {
    let metadata = metadata
        .as_object()
        .ok_or_else(|| format!("is {}, not an object", kind(metadata)))?;
    match metadata
        .iter()
        .find(|(_, v)| !(v.is_string() || v.is_number() || v.is_boolean()))
    {
        Some((key, v)) => Err(format!(
            "{key:?} is {}; values must be strings, numbers or booleans",
            kind(v)
        )),
        None => Ok(()),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---- Splicing: byte ranges in JSON text that serde_json has already accepted. ----

/// One `"key": value` member of an object.
struct Member {
    key: Range<usize>,
    value: Range<usize>,
}

fn skip_ws(text: &[u8], mut i: usize) -> usize {
    while i < text.len() && matches!(text[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The end of the JSON value starting at `i` (valid JSON assumed).
fn value_end(text: &[u8], i: usize) -> usize {
    match text[i] {
        b'"' => {
            let mut j = i + 1;
            while j < text.len() {
                match text[j] {
                    b'\\' => j += 2,
                    b'"' => return j + 1,
                    _ => j += 1,
                }
            }
            text.len()
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < text.len() {
                match text[j] {
                    b'"' => {
                        j = value_end(text, j);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            text.len()
        }
        _ => {
            let mut j = i;
            while j < text.len()
                && !matches!(text[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            j
        }
    }
}

/// The members of the object whose `{` is at `open`.
fn members(text: &str, open: usize) -> Vec<Member> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = skip_ws(bytes, open + 1);
    while i < bytes.len() && bytes[i] == b'"' {
        let key_end = value_end(bytes, i);
        let colon = skip_ws(bytes, key_end);
        let start = skip_ws(bytes, colon + 1);
        let end = value_end(bytes, start);
        out.push(Member {
            key: i..key_end,
            value: start..end,
        });
        i = skip_ws(bytes, end);
        if i < bytes.len() && bytes[i] == b',' {
            i = skip_ws(bytes, i + 1);
        }
    }
    out
}

/// The last member named `key` of the object at `open` (serde_json keeps the last duplicate).
fn last_member(text: &str, open: usize, key: &str) -> Option<Member> {
    members(text, open)
        .into_iter()
        .rev()
        .find(|m| serde_json::from_str::<String>(&text[m.key.clone()]).is_ok_and(|k| k == key))
}

/// The byte range of the top-level `"flags"` object.
fn flags_object_span(text: &str) -> Option<Range<usize>> {
    let open = skip_ws(text.as_bytes(), 0);
    last_member(text, open, "flags").map(|m| m.value)
}

fn splice(text: &str, range: Range<usize>, replacement: &str) -> String {
    let mut out = String::with_capacity(text.len() + replacement.len());
    out.push_str(&text[..range.start]);
    out.push_str(replacement);
    out.push_str(&text[range.end..]);
    out
}

/// The whitespace that starts the line holding byte `at`, if only whitespace precedes `at` on it.
fn line_indent(text: &str, at: usize) -> Option<&str> {
    let line_start = text[..at].rfind('\n').map_or(0, |n| n + 1);
    let before = &text[line_start..at];
    before
        .chars()
        .all(|c| c == ' ' || c == '\t')
        .then_some(before)
}

/// `value` as JSON text: pretty-printed with `unit` as the indentation step, or compact without.
/// Object keys come in the order they have in the first of `raws` (JSON texts of earlier versions
/// of the same value) that has them, then in the order of the later ones, then the rest.
fn render(value: &Value, raws: &[&str], unit: Option<&str>) -> String {
    let mut out = String::new();
    write_json(&mut out, value, raws, unit, 0);
    out
}

fn write_json(out: &mut String, value: &Value, raws: &[&str], unit: Option<&str>, level: usize) {
    let newline = |out: &mut String, level: usize| {
        if let Some(unit) = unit {
            out.push('\n');
            for _ in 0..level {
                out.push_str(unit);
            }
        }
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            let kids: Vec<Vec<(String, &str)>> =
                raws.iter().filter_map(|r| object_children(r)).collect();
            let mut order: Vec<&String> = Vec::new();
            for (key, _) in kids.iter().flatten() {
                if let Some((key, _)) = map.get_key_value(key) {
                    if !order.contains(&key) {
                        order.push(key);
                    }
                }
            }
            for key in map.keys() {
                if !order.contains(&key) {
                    order.push(key);
                }
            }
            out.push('{');
            for (i, key) in order.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, level + 1);
                out.push_str(&serde_json::to_string(key).expect("a string serializes"));
                out.push_str(if unit.is_some() { ": " } else { ":" });
                let child_raws: Vec<&str> = kids
                    .iter()
                    .filter_map(|k| k.iter().rev().find(|(k, _)| k == key).map(|(_, r)| *r))
                    .collect();
                write_json(out, &map[key], &child_raws, unit, level + 1);
            }
            newline(out, level);
            out.push('}');
        }
        Value::Array(items) if !items.is_empty() => {
            let kids: Vec<Vec<&str>> = raws.iter().filter_map(|r| array_children(r)).collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, level + 1);
                let child_raws: Vec<&str> = kids.iter().filter_map(|k| k.get(i).copied()).collect();
                write_json(out, item, &child_raws, unit, level + 1);
            }
            newline(out, level);
            out.push(']');
        }
        other => out.push_str(&serde_json::to_string(other).expect("a Value always serializes")),
    }
}

/// The members of the JSON object text `raw` (`None` if it is not an object).
fn object_children(raw: &str) -> Option<Vec<(String, &str)>> {
    let open = skip_ws(raw.as_bytes(), 0);
    (raw.as_bytes().get(open) == Some(&b'{')).then(|| {
        members(raw, open)
            .into_iter()
            .filter_map(|m| Some((serde_json::from_str(&raw[m.key]).ok()?, &raw[m.value])))
            .collect()
    })
}

/// The elements of the JSON array text `raw` (`None` if it is not an array).
fn array_children(raw: &str) -> Option<Vec<&str>> {
    let bytes = raw.as_bytes();
    let open = skip_ws(bytes, 0);
    if bytes.get(open) != Some(&b'[') {
        return None;
    }
    let mut out = Vec::new();
    let mut i = skip_ws(bytes, open + 1);
    while i < bytes.len() && bytes[i] != b']' {
        let end = value_end(bytes, i);
        out.push(&raw[i..end]);
        i = skip_ws(bytes, end);
        if i < bytes.len() && bytes[i] == b',' {
            i = skip_ws(bytes, i + 1);
        }
    }
    Some(out)
}

/// `value` rendered to replace the flag value starting at `at`: pretty-printed with the file's
/// indentation if the flag's key starts its line, compact otherwise.
fn render_like(text: &str, at: usize, value: &Value, raws: &[&str]) -> String {
    let flags = flags_object_span(text).unwrap_or(0..0);
    let key_start = members(text, flags.start)
        .into_iter()
        .find(|m| m.value.start == at)
        .map_or(at, |m| m.key.start);
    match line_indent(text, key_start) {
        Some(indent) => {
            let outer = text[..flags.start].rfind('"').and_then(|q| {
                let start = text[..q].rfind('"')?;
                line_indent(text, start)
            });
            let unit = match outer {
                Some(o) if indent.len() > o.len() && indent.starts_with(o) => &indent[o.len()..],
                _ => "  ",
            };
            render(value, raws, Some(unit)).replace('\n', &format!("\n{indent}"))
        }
        None => render(value, raws, None),
    }
}

/// `text` with the flag `key` appended to the `"flags"` object, formatted like its last member.
fn append_flag(text: &str, key: &str, value: &Value, raws: &[&str]) -> String {
    let flags = flags_object_span(text).expect("validated: flags is an object");
    let key_json = serde_json::to_string(key).expect("a string serializes");
    let existing = members(text, flags.start);
    match existing.last() {
        Some(last) => {
            let rendered = render_like(text, last.value.start, value, raws);
            let sep = match line_indent(text, last.key.start) {
                Some(indent) => format!(",\n{indent}"),
                None => ",".into(),
            };
            let insert = format!("{sep}{key_json}: {rendered}");
            splice(text, last.value.end..last.value.end, &insert)
        }
        None => {
            let outer = line_indent(
                text,
                text[..flags.start]
                    .rfind('"')
                    .and_then(|q| text[..q].rfind('"'))
                    .unwrap_or(0),
            )
            .unwrap_or("")
            .to_owned();
            let indent = format!("{outer}  ");
            let rendered = render(value, raws, Some("  ")).replace('\n', &format!("\n{indent}"));
            let insert = format!("{{\n{indent}{key_json}: {rendered}\n{outer}}}");
            splice(text, flags, &insert)
        }
    }
}

/// `[flagd] file = PATH`: a flagd flag-definition file (`[flags]` then gives the flags a new
/// file starts with).
pub const SYSTEM: System = System {
    section: "flagd",
    layer: LayerKind::Flags,
    applies: crate::exec::system::any_value,
    conflict: None,
    needs: None,
    read: |section| Ok(Box::new(section.parse::<FlagdConfig>()?)),
};

/// `[flagd]`: `file = PATH`, relative to the estate file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagdConfig {
    /// The flag file.
    pub file: String,
}

impl Config for FlagdConfig {
    fn describe(&self) -> String {
        self.file.clone()
    }

    fn connect(&self, with: &Connecting<'_>) -> Result<Connected, String> {
        let file = FlagFile::open(with.resolve(&self.file), &with.state.flags)
            .map_err(|e| e.to_string())?;
        let flags = file.read().map_err(|e| e.to_string())?;
        Ok(Connected {
            executor: Box::new(file),
            found: Found {
                flags: Some(flags),
                ..Found::default()
            },
            reader: None,
        })
    }
}

/// The flag file as the flags layer's [`Executor`]: each `WriteFlags` is a durable
/// read-modify-write of the file as it is on disk; the file is the truth at start.
impl Executor for FlagFile {
    fn perform(&mut self, effects: &[Effect], _report: Report<'_>) -> Completion {
        let mut done = Done::default();
        for (i, effect) in effects.iter().enumerate() {
            let Effect::WriteFlags { flag, enabled } = effect else {
                return Completion::Failed(Failure {
                    completed: i,
                    ..Failure::nothing_changed(ExecError::failed(
                        "performing a flags effect",
                        None,
                        format!("{effect:?} is not one"),
                    ))
                });
            };
            match FlagFile::set(self, flag, *enabled) {
                Ok(report) => done = done.then(Done::took(Seconds::measured(report.duration))),
                Err(e) => {
                    return Completion::Failed(Failure {
                        completed: i,
                        ..Failure::nothing_changed(ExecError::failed(
                            format!("writing flag {flag}"),
                            Some(self.path().display().to_string()),
                            e,
                        ))
                    })
                }
            }
        }
        Completion::Done(done)
    }

    fn observe(&mut self, _believed: &State) -> Found {
        match self.read() {
            Ok(flags) => Found {
                flags: Some(flags),
                ..Found::default()
            },
            Err(e) => Found {
                unknown: Some(e.to_string()),
                ..Found::default()
            },
        }
    }
}

use crate::core::effects::{Completion, Done, Effect, ExecError, Failure, Found, LayerKind};
use crate::core::state::State;
use crate::exec::system::{Config, Connected, Connecting, System};
use crate::exec::{Executor, Report};
use crate::protocol::values::Seconds;
