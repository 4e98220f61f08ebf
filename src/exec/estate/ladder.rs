//! The estate's `[ladder]`, `[[ladder.signals]]` and `[[ladder.rungs]]`, read into a
//! [`LadderConfig`] and checked against the estate ([`LadderConfig::check_against`]). The
//! section is read again from the text, with spans, so that every error names its line and
//! key: `line L (the line): ladder.rungs[1].action: what is wrong`.

use crate::core::ladder::{Key, LadderConfig, Rung, Signal};
use crate::core::state::State;
use crate::exec::system::{in_words, line_at};
use serde::Deserialize;
use std::ops::Range;
use toml::Spanned;

#[derive(Deserialize)]
struct Top {
    ladder: Option<Spanned<FileLadder>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLadder {
    prometheus: Option<Spanned<String>>,
    interval_seconds: Option<Spanned<u64>>,
    bad_samples: Option<Spanned<u32>>,
    verify_seconds: Option<Spanned<u64>>,
    max_runs: Option<Spanned<u32>>,
    #[serde(default)]
    signals: Vec<Spanned<FileSignal>>,
    #[serde(default)]
    rungs: Vec<Spanned<FileRung>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSignal {
    name: Option<Spanned<String>>,
    query: Option<Spanned<String>>,
    above: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRung {
    action: Option<Spanned<toml::Value>>,
    approval: Option<Spanned<bool>>,
}

/// Reads `[ladder]` from the estate `text`, if it has one, and checks it against `state`.
///
/// # Errors
/// One line naming the line and the key: a TOML or type error, a missing key, or what
/// [`LadderConfig::check_against`] finds wrong.
pub(super) fn read(text: &str, state: &State) -> Result<Option<LadderConfig>, String> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        format!("{}: {}", line_at(text, at), in_words(e.message()))
    })?;
    let top: Top = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = key_path(e.path());
        let inner = e.into_inner();
        let message = in_words(inner.message());
        let line = inner
            .span()
            .map_or_else(|| "[ladder]".to_owned(), |span| line_at(text, span.start));
        if key.is_empty() {
            format!("{line}: {message}")
        } else {
            format!("{line}: {key}: {message}")
        }
    })?;
    let Some(file) = top.ladder else {
        return Ok(None);
    };
    let at = |span: Range<usize>, key: String, problem: &str| {
        format!("{}: {key}: {problem}", line_at(text, span.start))
    };
    let table = file.span();
    let ladder = file.get_ref();
    let prometheus = ladder.prometheus.as_ref().ok_or_else(|| {
        at(
            table.clone(),
            "ladder.prometheus".to_owned(),
            "missing; give the Prometheus base URL, such as \"http://127.0.0.1:9090\"",
        )
    })?;
    let mut signals = Vec::with_capacity(ladder.signals.len());
    for (index, signal) in ladder.signals.iter().enumerate() {
        let key = |k: &str| format!("ladder.signals[{index}].{k}");
        let fields = signal.get_ref();
        let name = fields
            .name
            .as_ref()
            .ok_or_else(|| at(signal.span(), key("name"), "missing; name the signal"))?;
        let query = fields.query.as_ref().ok_or_else(|| {
            at(
                signal.span(),
                key("query"),
                "missing; give the PromQL query of the signal",
            )
        })?;
        let above = fields.above.as_ref().ok_or_else(|| {
            at(
                signal.span(),
                key("above"),
                "missing; give the threshold above which a sample is bad",
            )
        })?;
        let threshold = match above.get_ref() {
            toml::Value::Float(value) => *value,
            toml::Value::Integer(value) => *value as f64,
            other => {
                return Err(at(
                    above.span(),
                    key("above"),
                    &format!(
                        "{} is not a number; the threshold is a number such as 0.05",
                        crate::protocol::quote(&other.to_string())
                    ),
                ))
            }
        };
        signals.push(Signal {
            name: name.get_ref().clone(),
            query: query.get_ref().clone(),
            above: threshold,
        });
    }
    let mut rungs = Vec::with_capacity(ladder.rungs.len());
    for (index, rung) in ladder.rungs.iter().enumerate() {
        let fields = rung.get_ref();
        let action = fields.action.as_ref().ok_or_else(|| {
            at(
                rung.span(),
                format!("ladder.rungs[{index}].action"),
                "missing; give the request to send, such as {type = \"disable_feature\", feature = \"NAME\"}",
            )
        })?;
        let body = serde_json::to_value(action.get_ref()).map_err(|e| {
            at(
                action.span(),
                format!("ladder.rungs[{index}].action"),
                &e.to_string(),
            )
        })?;
        let mut planned = Rung::new(body);
        if let Some(approval) = &fields.approval {
            planned.approval = *approval.get_ref();
        }
        rungs.push(planned);
    }
    let setting = |value: &Option<Spanned<u64>>, default: u64| {
        value.as_ref().map_or(default, |v| *v.get_ref())
    };
    let count = |value: &Option<Spanned<u32>>, default: u32| {
        value.as_ref().map_or(default, |v| *v.get_ref())
    };
    let config = LadderConfig {
        prometheus: prometheus.get_ref().clone(),
        interval_seconds: setting(
            &ladder.interval_seconds,
            LadderConfig::DEFAULT_INTERVAL_SECONDS,
        ),
        bad_samples: count(&ladder.bad_samples, LadderConfig::DEFAULT_BAD_SAMPLES),
        verify_seconds: setting(&ladder.verify_seconds, LadderConfig::DEFAULT_VERIFY_SECONDS),
        max_runs: count(&ladder.max_runs, LadderConfig::DEFAULT_MAX_RUNS),
        signals,
        rungs,
    };
    config.check_against(state).map_err(|e| {
        let span = span_of(&file, e.key);
        at(span, e.key.to_string(), &e.problem)
    })?;
    Ok(Some(config))
}

/// Where the key an error names is written: its value, or the table it is missing from.
fn span_of(file: &Spanned<FileLadder>, key: Key) -> Range<usize> {
    let ladder = file.get_ref();
    let table = file.span();
    match key {
        Key::Ladder(name) => {
            let field = match name {
                "prometheus" => ladder.prometheus.as_ref().map(Spanned::span),
                "interval_seconds" => ladder.interval_seconds.as_ref().map(Spanned::span),
                "bad_samples" => ladder.bad_samples.as_ref().map(Spanned::span),
                "verify_seconds" => ladder.verify_seconds.as_ref().map(Spanned::span),
                "max_runs" => ladder.max_runs.as_ref().map(Spanned::span),
                _ => None,
            };
            field.unwrap_or(table)
        }
        Key::Signal(index, name) => match ladder.signals.get(index) {
            Some(signal) => {
                let fields = signal.get_ref();
                let field = match name {
                    "name" => fields.name.as_ref().map(Spanned::span),
                    "query" => fields.query.as_ref().map(Spanned::span),
                    "above" => fields.above.as_ref().map(Spanned::span),
                    _ => None,
                };
                field.unwrap_or_else(|| signal.span())
            }
            None => table,
        },
        Key::Rung(index, name) => match ladder.rungs.get(index) {
            Some(rung) => {
                let fields = rung.get_ref();
                let field = match name {
                    "action" => fields.action.as_ref().map(Spanned::span),
                    "approval" => fields.approval.as_ref().map(Spanned::span),
                    _ => None,
                };
                field.unwrap_or_else(|| rung.span())
            }
            None => table,
        },
    }
}

/// A serde path as the estate writes keys, `ladder.signals[0].above`, without the segments of
/// spans.
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                if name.starts_with("$__") {
                    continue;
                }
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
            }
            Segment::Unknown => {}
        }
    }
    key
}
