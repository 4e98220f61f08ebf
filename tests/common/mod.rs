//! Helpers shared by the integration tests: a session over an estate, one line in, the reply
//! line out, and the snapshot settings (snapshots live in the top-level `snapshots/`).

#![allow(dead_code)]

use rollback_node::{Estate, Session};

/// Insta settings: snapshots in `snapshots/`, named explicitly, no module prefix.
pub fn snapshot_settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings
}

/// The example estate with `replace` swapped for `by` (which must occur).
pub fn estate_with(replace: &str, by: &str) -> Estate {
    let text = rollback_node::EXAMPLE_ESTATE;
    assert!(
        text.contains(replace),
        "the example estate has no {replace:?}"
    );
    Estate::from_toml(&text.replacen(replace, by, 1), "test estate").unwrap()
}

/// A simulated, in-memory session over `estate`.
pub fn session(estate: Estate) -> Session {
    Session::simulated(estate)
}

/// Feeds `line` and returns the reply line (without `\n`), or `None` if there was none.
pub fn reply(session: &mut Session, line: &str) -> Option<String> {
    let mut out = Vec::new();
    let diagnostic = session.handle_line(line.as_bytes(), &mut out);
    let text = String::from_utf8(out).expect("replies are UTF-8");
    match text.strip_suffix('\n') {
        Some(reply) => {
            assert!(!reply.contains('\n'), "one reply line at most: {text}");
            assert!(diagnostic.is_none(), "a replied line has no diagnostic");
            Some(reply.to_owned())
        }
        None => {
            assert!(text.is_empty());
            assert!(
                diagnostic.is_some(),
                "a line without reply gets a diagnostic"
            );
            None
        }
    }
}

/// A request line from `admin` to `n1` with the given body.
pub fn line(body: &str) -> String {
    format!(r#"{{"src":"admin","dest":"n1","body":{body}}}"#)
}
