//! One migration file: its text, its SHA-384 checksum (as sqlx computes it), its statements with
//! the line each starts on, and how it must be run with respect to transactions.
//!
//! The splitter knows `--` and (nested) `/* */` comments, single-quoted strings (with `E''`
//! backslash escapes), double-quoted and backquoted identifiers, PostgreSQL dollar quoting
//! (`$$` and `$tag$`) and SQLite trigger bodies (`BEGIN ... END`), so semicolons inside them do
//! not end a statement.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha384};

/// One statement of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The 1-based line the statement starts on.
    pub line: usize,
    /// The statement, from its first token to just before its `;`.
    pub text: String,
}

impl Statement {
    /// The first ~80 characters of the statement on one line, for messages.
    pub fn excerpt(&self) -> String {
        excerpt(&self.text)
    }
}

/// The first ~80 characters of some SQL on one line, for messages.
pub fn excerpt(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 80 {
        let cut: String = flat.chars().take(77).collect();
        format!("{cut}...")
    } else {
        flat
    }
}

/// How a file must be run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxMode {
    /// The default: the file runs inside one transaction with the version update.
    Transactional,
    /// The file opens and commits its own transaction; its `BEGIN`/`COMMIT` are dropped and its
    /// body runs inside ours.
    OwnTransaction,
    /// SQLite's documented shape for table changes: connection pragmas (`PRAGMA
    /// foreign_keys=OFF`, …) before one `BEGIN`, the body, its `COMMIT`, and pragmas after it
    /// (`PRAGMA foreign_keys=ON`). Such a pragma does nothing inside a transaction, so the
    /// leading ones are applied before our transaction and the trailing ones after it — also
    /// when the body fails, so the connection is restored; the body and the version update run
    /// inside our one transaction, so a failure changes nothing.
    Wrapped {
        /// The pragmas before the file's `BEGIN`, applied before our transaction.
        before: Vec<Statement>,
        /// The pragmas after the file's `COMMIT`, applied after our transaction ends, however
        /// it ends.
        after: Vec<Statement>,
    },
    /// The file cannot run inside a transaction; it runs with golang-migrate's dirty protocol.
    NoTransaction {
        /// Why: the `-- no-transaction` marker, or the statement that cannot run in one.
        reason: String,
    },
}

impl TxMode {
    /// Whether the file runs inside a transaction of ours.
    pub fn in_transaction(&self) -> bool {
        !matches!(self, TxMode::NoTransaction { .. })
    }

    /// The pragmas applied before and after our transaction, for [`TxMode::Wrapped`].
    pub fn wrap(&self) -> Option<(&[Statement], &[Statement])> {
        match self {
            TxMode::Wrapped { before, after } => Some((before, after)),
            _ => None,
        }
    }
}

impl TxMode {
    /// Whether a file of this mode can share one transaction with a file of `other`'s mode
    /// that follows it in a run. Both must run in a transaction, and either neither has pragmas
    /// to apply around it, or both have the same ones and the trailing ones reset only what the
    /// leading ones set: then applying the leading ones once, running both bodies, and applying
    /// the trailing ones once is what running the two files one after the other does. Otherwise
    /// each gets its own transaction (a pragma cannot be applied inside one).
    pub fn can_share_transaction_with(&self, other: &TxMode) -> bool {
        let same = |a: &[Statement], b: &[Statement]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| words(&x.text, 8) == words(&y.text, 8))
        };
        match (self, other) {
            (TxMode::NoTransaction { .. }, _) | (_, TxMode::NoTransaction { .. }) => false,
            (
                TxMode::Wrapped { before, after },
                TxMode::Wrapped {
                    before: before2,
                    after: after2,
                },
            ) => {
                same(before, before2)
                    && same(after, after2)
                    && after.iter().all(|a| {
                        before
                            .iter()
                            .any(|b| pragma_name(&b.text) == pragma_name(&a.text))
                    })
            }
            (TxMode::Wrapped { .. }, _) | (_, TxMode::Wrapped { .. }) => false,
            _ => true,
        }
    }
}

/// `PRAGMA a=1 and PRAGMA b=2`, for messages.
fn pragmas(statements: &[Statement]) -> String {
    statements
        .iter()
        .map(Statement::excerpt)
        .collect::<Vec<_>>()
        .join(" and ")
}

/// The protocol a file runs under, in words: `one transaction`, `one transaction; PRAGMA
/// foreign_keys=OFF applied before it and PRAGMA foreign_keys=ON after`, `dirty protocol: line
/// 3: VACUUM cannot run inside a transaction`.
impl fmt::Display for TxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxMode::Transactional => f.write_str("one transaction"),
            TxMode::OwnTransaction => {
                f.write_str("one transaction (the file's own BEGIN/COMMIT run as ours)")
            }
            TxMode::Wrapped { before, after } => {
                f.write_str("one transaction")?;
                match (before.is_empty(), after.is_empty()) {
                    (false, false) => write!(
                        f,
                        "; {} applied before it and {} after",
                        pragmas(before),
                        pragmas(after)
                    ),
                    (false, true) => write!(f, "; {} applied before it", pragmas(before)),
                    (true, false) => write!(f, "; {} applied after it", pragmas(after)),
                    (true, true) => Ok(()),
                }
            }
            TxMode::NoTransaction { reason } => write!(f, "dirty protocol: {reason}"),
        }
    }
}

/// A loaded migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
    /// SHA-384 of its bytes, lowercase hex.
    pub checksum: String,
    /// Every statement, in order, including any `BEGIN`/`COMMIT` of its own.
    pub statements: Vec<Statement>,
    /// How it must be run.
    pub mode: TxMode,
}

/// Why a migration file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SqlFileError {
    /// The file could not be read.
    #[error("{}: cannot be read ({source}); expected a readable SQL file", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not UTF-8 text.
    #[error("{}: is not UTF-8 text; expected SQL saved as UTF-8", path.display())]
    NotText {
        /// The file.
        path: PathBuf,
    },
}

/// SHA-384 of some bytes, lowercase hex (sqlx's migration checksum).
pub fn checksum(bytes: &[u8]) -> String {
    hex::encode(Sha384::digest(bytes))
}

impl SqlFile {
    /// Reads and analyses a file.
    pub fn load(path: impl AsRef<Path>) -> Result<SqlFile, SqlFileError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| SqlFileError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| SqlFileError::NotText {
            path: path.to_path_buf(),
        })?;
        Ok(SqlFile::parse(path, text))
    }

    /// Analyses text as if read from `path`.
    pub fn parse(path: impl AsRef<Path>, text: String) -> SqlFile {
        let statements = split(&text);
        let mode = classify(&text, &statements);
        SqlFile {
            path: path.as_ref().to_path_buf(),
            checksum: checksum(text.as_bytes()),
            text,
            statements,
            mode,
        }
    }

    /// The statements to execute inside the run: for [`TxMode::OwnTransaction`], without the
    /// file's own `BEGIN`/`COMMIT`; for [`TxMode::Wrapped`], only those between them (the
    /// pragmas around them are applied outside); otherwise all of them.
    pub fn body(&self) -> Vec<&Statement> {
        match &self.mode {
            TxMode::OwnTransaction => self
                .statements
                .iter()
                .filter(|s| control(&s.text).is_none())
                .collect(),
            TxMode::Wrapped { before, after } => self.statements
                [before.len()..self.statements.len() - after.len()]
                .iter()
                .filter(|s| control(&s.text).is_none())
                .collect(),
            _ => self.statements.iter().collect(),
        }
    }
}

/// Transaction control statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Begin,
    Commit,
    Other,
}

fn control(text: &str) -> Option<Control> {
    let w = words(text, 3);
    let first = w.first().map(String::as_str)?;
    let second = w.get(1).map(String::as_str);
    match first {
        "BEGIN" => match second {
            None
            | Some("TRANSACTION" | "WORK" | "ISOLATION" | "READ" | "DEFERRED" | "IMMEDIATE")
            | Some("EXCLUSIVE" | "NOT") => Some(Control::Begin),
            _ => None,
        },
        "START" if second == Some("TRANSACTION") => Some(Control::Begin),
        "COMMIT" | "END" => Some(Control::Commit),
        "ROLLBACK" | "SAVEPOINT" | "RELEASE" | "PREPARE" | "ABORT" => Some(Control::Other),
        _ => None,
    }
}

/// The statement that keeps a file out of a transaction, if any.
fn cannot_run_in_transaction(text: &str) -> Option<&'static str> {
    let w = words(text, 8);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let has = |word: &str| w.contains(&word);
    match w.as_slice() {
        ["CREATE", "INDEX", "CONCURRENTLY", ..]
        | ["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY", ..] => Some("CREATE INDEX CONCURRENTLY"),
        ["DROP", "INDEX", "CONCURRENTLY", ..] => Some("DROP INDEX CONCURRENTLY"),
        ["REINDEX", ..] if has("CONCURRENTLY") => Some("REINDEX CONCURRENTLY"),
        ["ALTER", "TABLE", ..] if has("DETACH") && has("CONCURRENTLY") => {
            Some("DETACH PARTITION CONCURRENTLY")
        }
        ["VACUUM", ..] => Some("VACUUM"),
        // Since PostgreSQL 12 this runs in a transaction, but the new value cannot be used
        // before that transaction commits, so it is kept out of ours on every version.
        ["ALTER", "TYPE", ..] if has("ADD") && has("VALUE") => Some("ALTER TYPE ... ADD VALUE"),
        ["CREATE", "DATABASE", ..] | ["DROP", "DATABASE", ..] => Some("CREATE/DROP DATABASE"),
        ["CREATE", "TABLESPACE", ..] | ["DROP", "TABLESPACE", ..] => Some("CREATE/DROP TABLESPACE"),
        ["ALTER", "SYSTEM", ..] => Some("ALTER SYSTEM"),
        // SQLite ignores these inside a transaction, which would silently change their meaning.
        ["PRAGMA", ..] if pragma_name(text).is_some_and(|n| n == "FOREIGN_KEYS") => {
            Some("PRAGMA foreign_keys")
        }
        ["PRAGMA", ..] if pragma_name(text).is_some_and(|n| n == "JOURNAL_MODE") => {
            Some("PRAGMA journal_mode")
        }
        _ => None,
    }
}

/// The name of a `PRAGMA` statement (uppercased, without a `main.`/`temp.` schema), if it is one.
fn pragma_name(text: &str) -> Option<String> {
    let mut w = words(text, 3).into_iter();
    if w.next().as_deref() != Some("PRAGMA") {
        return None;
    }
    match w.next() {
        Some(schema) if schema == "MAIN" || schema == "TEMP" => w.next(),
        name => name,
    }
}

/// Whether a statement is a pragma that sets this connection's behaviour, may stand outside the
/// file's `BEGIN`/`COMMIT`, and can be applied outside our transaction without changing the
/// database: `foreign_keys` (a no-op inside a transaction) and `legacy_alter_table` (the two of
/// SQLite's documented table-change procedure). `journal_mode` is not one: it changes the
/// database file for every connection, so a file with it keeps the dirty protocol.
pub fn is_connection_pragma(text: &str) -> bool {
    pragma_name(text).is_some_and(|n| n == "FOREIGN_KEYS" || n == "LEGACY_ALTER_TABLE")
}

/// How many connection pragmas lead the file and how many trail it.
fn edges(statements: &[Statement]) -> (usize, usize) {
    let lead = statements
        .iter()
        .take_while(|s| is_connection_pragma(&s.text))
        .count();
    let trail = statements[lead..]
        .iter()
        .rev()
        .take_while(|s| is_connection_pragma(&s.text))
        .count();
    (lead, trail)
}

/// SQLite's table-change shape: connection pragmas, one `BEGIN`, a body that can run inside a
/// transaction, its `COMMIT`, connection pragmas; at least one pragma outside the pair.
fn wrapped(statements: &[Statement]) -> Option<TxMode> {
    let (lead, trail) = edges(statements);
    if lead + trail + 2 > statements.len() {
        return None;
    }
    let outside = statements[..lead]
        .iter()
        .chain(&statements[statements.len() - trail..]);
    // Pragmas that work inside a transaction (legacy_alter_table) alone need no wrapping: the
    // file is an ordinary own-transaction one.
    if !outside
        .clone()
        .any(|s| cannot_run_in_transaction(&s.text).is_some())
    {
        return None;
    }
    let inner = &statements[lead..statements.len() - trail];
    let (first, rest) = inner.split_first()?;
    let (last, body) = rest.split_last()?;
    let fits = control(&first.text) == Some(Control::Begin)
        && control(&last.text) == Some(Control::Commit)
        && body
            .iter()
            .all(|s| control(&s.text).is_none() && cannot_run_in_transaction(&s.text).is_none());
    fits.then(|| TxMode::Wrapped {
        before: statements[..lead].to_vec(),
        after: statements[statements.len() - trail..].to_vec(),
    })
}

/// Decides how a file must be run.
pub fn classify(text: &str, statements: &[Statement]) -> TxMode {
    if text.starts_with("-- no-transaction") {
        return TxMode::NoTransaction {
            reason: "the file starts with `-- no-transaction`".into(),
        };
    }
    if let Some(mode) = wrapped(statements) {
        return mode;
    }
    // Connection pragmas leading or trailing the file could be applied outside our transaction,
    // were the rest one BEGIN/COMMIT pair; what else keeps the file out of one is named first.
    let (lead, trail) = edges(statements);
    let inner = &statements[lead..statements.len() - trail];
    for s in inner {
        if let Some(what) = cannot_run_in_transaction(&s.text) {
            return TxMode::NoTransaction {
                reason: format!("line {}: {what} cannot run inside a transaction", s.line),
            };
        }
    }
    // BEGIN/COMMIT pairs, alternating, with nothing else controlling transactions: the body can
    // run inside our transaction. Anything else (ROLLBACK, SAVEPOINT, an unpaired BEGIN) runs
    // as written.
    let mut open = false;
    let mut seen = false;
    for s in statements {
        match control(&s.text) {
            Some(Control::Begin) if !open => {
                open = true;
                seen = true;
            }
            Some(Control::Commit) if open => open = false,
            Some(_) => {
                return TxMode::NoTransaction {
                    reason: format!(
                        "line {}: the file controls its own transactions ({})",
                        s.line,
                        excerpt(&s.text)
                    ),
                }
            }
            None => {}
        }
    }
    if open {
        return TxMode::NoTransaction {
            reason: "the file opens a transaction it does not commit".into(),
        };
    }
    let mut outside = statements[..lead]
        .iter()
        .chain(&statements[lead + inner.len()..]);
    if let Some(s) = outside.find(|s| cannot_run_in_transaction(&s.text).is_some()) {
        return TxMode::NoTransaction {
            reason: format!(
                "line {}: {} cannot run inside a transaction, and the rest of the file is not one BEGIN ... COMMIT to apply it around",
                s.line,
                excerpt(&s.text)
            ),
        };
    }
    if seen {
        TxMode::OwnTransaction
    } else {
        TxMode::Transactional
    }
}

/// The first `n` words of a statement outside comments and quotes, uppercased.
fn words(text: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut lexer = Lexer::new(text);
    while out.len() < n {
        match lexer.next_token() {
            None => break,
            Some(Token::Word(start, end)) => out.push(text[start..end].to_ascii_uppercase()),
            Some(_) => {}
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// An identifier or keyword, byte range.
    Word(usize, usize),
    /// A `;`.
    Semicolon,
    /// Anything else significant (string, quoted identifier, punctuation, number).
    Other,
}

/// A small SQL lexer that skips comments and whitespace; `pos` is the byte offset reached.
struct Lexer<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Self {
        Lexer {
            text,
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    fn peek(&self, at: usize) -> Option<u8> {
        self.bytes.get(at).copied()
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) {
        loop {
            match self.peek(self.pos) {
                Some(b) if b.is_ascii_whitespace() => self.pos += 1,
                Some(b'-') if self.peek(self.pos + 1) == Some(b'-') => {
                    while let Some(b) = self.peek(self.pos) {
                        if b == b'\n' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                Some(b'/') if self.peek(self.pos + 1) == Some(b'*') => {
                    self.pos += 2;
                    let mut depth = 1usize;
                    while depth > 0 {
                        match (self.peek(self.pos), self.peek(self.pos + 1)) {
                            (None, _) => return,
                            (Some(b'*'), Some(b'/')) => {
                                depth -= 1;
                                self.pos += 2;
                            }
                            (Some(b'/'), Some(b'*')) => {
                                depth += 1;
                                self.pos += 2;
                            }
                            _ => self.pos += 1,
                        }
                    }
                }
                _ => return,
            }
        }
    }

    /// Skips a quoted run closed by `close`, where a doubled `close` is an escaped one.
    fn skip_quoted(&mut self, close: u8, backslash: bool) {
        self.pos += 1;
        while let Some(b) = self.peek(self.pos) {
            self.pos += 1;
            if backslash && b == b'\\' {
                self.pos += 1;
            } else if b == close {
                if self.peek(self.pos) == Some(close) {
                    self.pos += 1;
                } else {
                    return;
                }
            }
        }
        self.pos = self.pos.min(self.bytes.len());
    }

    /// A dollar-quote tag starting at `pos` (`$$` or `$tag$`), as its length in bytes.
    fn dollar_tag(&self) -> Option<usize> {
        let mut i = self.pos + 1;
        match self.peek(i) {
            Some(b'$') => return Some(2),
            Some(b) if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 => {}
            _ => return None,
        }
        while let Some(b) = self.peek(i) {
            if b == b'$' {
                return Some(i + 1 - self.pos);
            }
            if !(b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80) {
                return None;
            }
            i += 1;
        }
        None
    }

    fn next_token(&mut self) -> Option<Token> {
        self.skip_trivia();
        let start = self.pos;
        let b = self.peek(start)?;
        match b {
            b';' => {
                self.pos += 1;
                Some(Token::Semicolon)
            }
            b'\'' => {
                let backslash = start > 0
                    && matches!(self.bytes[start - 1], b'E' | b'e')
                    && (start < 2 || !is_word_byte(self.bytes[start - 2]));
                self.skip_quoted(b'\'', backslash);
                Some(Token::Other)
            }
            b'"' => {
                self.skip_quoted(b'"', false);
                Some(Token::Other)
            }
            b'`' => {
                self.skip_quoted(b'`', false);
                Some(Token::Other)
            }
            b'[' => {
                // SQLite's bracketed identifiers; PostgreSQL array subscripts hold no `;`.
                while let Some(c) = self.peek(self.pos) {
                    self.pos += 1;
                    if c == b']' {
                        break;
                    }
                }
                Some(Token::Other)
            }
            b'$' => {
                if let Some(len) = self.dollar_tag() {
                    let tag = &self.text[start..start + len];
                    let body = start + len;
                    match self.text[body..].find(tag) {
                        Some(end) => self.pos = body + end + len,
                        None => self.pos = self.bytes.len(),
                    }
                } else {
                    self.pos += 1;
                    while self.peek(self.pos).is_some_and(|c| c.is_ascii_digit()) {
                        self.pos += 1;
                    }
                }
                Some(Token::Other)
            }
            _ if is_word_byte(b) => {
                while self
                    .peek(self.pos)
                    .is_some_and(|c| is_word_byte(c) || c == b'$')
                {
                    self.pos += 1;
                }
                Some(Token::Word(start, self.pos))
            }
            _ => {
                // One character (keep UTF-8 boundaries).
                let len = self.text[start..].chars().next().map_or(1, char::len_utf8);
                self.pos += len;
                Some(Token::Other)
            }
        }
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Splits SQL text into statements, each with the 1-based line it starts on. Empty statements
/// (only comments or whitespace) are dropped; a last statement without `;` is kept.
pub fn split(text: &str) -> Vec<Statement> {
    let mut out = Vec::new();
    let mut lexer = Lexer::new(text);
    let mut start: Option<usize> = None;
    let mut end = 0usize;
    // Words seen in the current statement, to follow SQLite trigger bodies.
    let mut first_words: Vec<String> = Vec::new();
    let mut trigger = false;
    let mut depth = 0usize;
    let mut line = 1usize;
    let mut line_at = 0usize;
    let mut line_of = |offset: usize| {
        line += text.as_bytes()[line_at..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        line_at = offset;
        line
    };
    let push = |start: usize, end: usize, out: &mut Vec<Statement>, line: usize| {
        out.push(Statement {
            line,
            text: text[start..end].trim_end().to_owned(),
        });
    };
    let mut start_line = 0usize;
    loop {
        lexer.skip_trivia();
        let at = lexer.pos;
        let Some(token) = lexer.next_token() else {
            break;
        };
        match token {
            Token::Semicolon if depth == 0 => {
                if let Some(s) = start.take() {
                    push(s, end, &mut out, start_line);
                }
                first_words.clear();
                trigger = false;
            }
            _ => {
                if start.is_none() {
                    start = Some(at);
                    start_line = line_of(at);
                }
                end = lexer.pos;
                if let Token::Word(a, b) = token {
                    let word = text[a..b].to_ascii_uppercase();
                    if first_words.len() < 4 {
                        first_words.push(word.clone());
                        trigger = first_words.first().is_some_and(|w| w == "CREATE")
                            && first_words.iter().any(|w| w == "TRIGGER");
                    }
                    if trigger {
                        match word.as_str() {
                            "BEGIN" | "CASE" => depth += 1,
                            "END" => depth = depth.saturating_sub(1),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    if let Some(s) = start {
        push(s, end, &mut out, start_line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<(usize, String)> {
        split(sql).into_iter().map(|s| (s.line, s.text)).collect()
    }

    #[test]
    fn splits_with_lines() {
        let sql = "-- header; not a statement\nCREATE TABLE a (x text default ';');\n\n/* c; */ INSERT INTO \"we;ird\" VALUES ($$a;b$$, $fn$ ; $fn$);\nSELECT E'it\\'s;'\n";
        assert_eq!(
            texts(sql),
            vec![
                (2, "CREATE TABLE a (x text default ';')".to_owned()),
                (
                    4,
                    "INSERT INTO \"we;ird\" VALUES ($$a;b$$, $fn$ ; $fn$)".to_owned()
                ),
                (5, "SELECT E'it\\'s;'".to_owned()),
            ]
        );
    }

    #[test]
    fn trigger_bodies() {
        let sql = "CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE b SET n = CASE WHEN 1 THEN 2 END; DELETE FROM c; END;\nSELECT 1;";
        let s = split(sql);
        assert_eq!(s.len(), 2);
        assert!(s[0].text.ends_with("END"));
        assert_eq!(s[1].line, 2);
    }

    #[test]
    fn modes() {
        let m = |sql: &str| SqlFile::parse("x.sql", sql.to_owned()).mode;
        assert_eq!(m("CREATE TABLE a (x int);"), TxMode::Transactional);
        assert_eq!(
            m("BEGIN;\nCREATE TABLE a (x int);\nCOMMIT;"),
            TxMode::OwnTransaction
        );
        assert!(!m("-- no-transaction\nCREATE TABLE a (x int);").in_transaction());
        assert!(!m("CREATE UNIQUE INDEX CONCURRENTLY i ON a (x);").in_transaction());
        assert!(!m("vacuum;").in_transaction());
        assert!(!m("BEGIN; SELECT 1; ROLLBACK;").in_transaction());
        let f = SqlFile::parse("x.sql", "BEGIN;\nSELECT 1;\nCOMMIT;\n".to_owned());
        assert_eq!(f.body().len(), 1);
        assert_eq!(f.checksum.len(), 96);
    }

    /// SQLite's documented procedure for table changes.
    const TABLE_CHANGE: &str = "-- rebuild teams\nPRAGMA foreign_keys=OFF;\nBEGIN;\nCREATE TABLE new_teams (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\nINSERT INTO new_teams SELECT id, name FROM teams;\nDROP TABLE teams;\nALTER TABLE new_teams RENAME TO teams;\nPRAGMA foreign_key_check;\nCOMMIT;\nPRAGMA foreign_keys=ON;\n";

    #[test]
    fn the_table_change_shape_is_wrapped() {
        let f = SqlFile::parse("x.sql", TABLE_CHANGE.to_owned());
        let Some((before, after)) = f.mode.wrap() else {
            panic!("{:?}", f.mode)
        };
        assert_eq!(
            (before[0].line, before[0].text.as_str()),
            (2, "PRAGMA foreign_keys=OFF")
        );
        assert_eq!(
            (after[0].line, after[0].text.as_str()),
            (10, "PRAGMA foreign_keys=ON")
        );
        assert!(f.mode.in_transaction());
        let body: Vec<_> = f.body().iter().map(|s| s.line).collect();
        assert_eq!(body, vec![4, 5, 6, 7, 8]);
        assert_eq!(
            f.mode.to_string(),
            "one transaction; PRAGMA foreign_keys=OFF applied before it and PRAGMA foreign_keys=ON after"
        );
        // Spelling, a schema name, legacy_alter_table, pragmas on one side only.
        let m = |sql: &str| SqlFile::parse("x.sql", sql.to_owned()).mode;
        assert!(
            m("pragma main.foreign_keys = 0; begin transaction; drop table a; end;")
                .wrap()
                .is_some()
        );
        let legacy = m("PRAGMA foreign_keys=OFF;\nPRAGMA legacy_alter_table=ON;\nBEGIN;\nALTER TABLE a RENAME TO b;\nCOMMIT;\nPRAGMA legacy_alter_table=OFF;\nPRAGMA foreign_keys=ON;");
        assert_eq!(legacy.wrap().map(|(b, a)| (b.len(), a.len())), Some((2, 2)));
        // legacy_alter_table works inside a transaction: alone it needs no wrapping.
        assert_eq!(
            m("PRAGMA legacy_alter_table=ON;\nBEGIN;\nALTER TABLE a RENAME TO b;\nCOMMIT;\nPRAGMA legacy_alter_table=OFF;"),
            TxMode::OwnTransaction
        );
        assert_eq!(
            m("PRAGMA legacy_alter_table=ON;\nALTER TABLE a RENAME TO b;"),
            TxMode::Transactional
        );
        let trailing = m("BEGIN;\nCREATE TABLE a (x int);\nCOMMIT;\nPRAGMA foreign_keys=ON;");
        assert_eq!(
            trailing.to_string(),
            "one transaction; PRAGMA foreign_keys=ON applied after it"
        );
    }

    #[test]
    fn what_cannot_be_wrapped_keeps_the_dirty_protocol() {
        let m = |sql: &str| SqlFile::parse("x.sql", sql.to_owned()).mode;
        let dirty = |sql: &str| {
            let mode = m(sql);
            assert!(!mode.in_transaction(), "{sql}: {mode:?}");
            mode.to_string()
        };
        // A pragma between statements of the body.
        let between = dirty(
            "BEGIN;\nCREATE TABLE a (x int);\nPRAGMA foreign_keys=OFF;\nDROP TABLE b;\nCOMMIT;",
        );
        assert_eq!(
            between,
            "dirty protocol: line 3: PRAGMA foreign_keys cannot run inside a transaction"
        );
        // No BEGIN/COMMIT pair to wrap.
        dirty("PRAGMA foreign_keys=OFF;\nDROP TABLE a;\nPRAGMA foreign_keys=ON;");
        // An unpaired BEGIN.
        dirty("PRAGMA foreign_keys=OFF;\nBEGIN;\nDROP TABLE a;\nPRAGMA foreign_keys=ON;");
        // Two pairs with pragmas between them.
        dirty("PRAGMA foreign_keys=OFF;\nBEGIN;\nDROP TABLE a;\nCOMMIT;\nPRAGMA foreign_keys=ON;\nPRAGMA foreign_keys=OFF;\nBEGIN;\nDROP TABLE b;\nCOMMIT;\nPRAGMA foreign_keys=ON;");
        // Something else outside the pair.
        dirty("PRAGMA foreign_keys=OFF;\nDROP TABLE c;\nBEGIN;\nDROP TABLE a;\nCOMMIT;\nPRAGMA foreign_keys=ON;");
        // journal_mode changes the file for every connection: not ours to apply outside.
        let journal = dirty("PRAGMA journal_mode=WAL;\nBEGIN;\nCREATE TABLE a (x int);\nCOMMIT;");
        assert!(journal.contains("line 1: PRAGMA journal_mode"), "{journal}");
        // A body that cannot run in a transaction.
        let vacuum = dirty("PRAGMA foreign_keys=OFF;\nBEGIN;\nDROP TABLE a;\nCOMMIT;\nVACUUM;\nPRAGMA foreign_keys=ON;");
        assert!(vacuum.contains("VACUUM"), "{vacuum}");
        assert_eq!(
            dirty("-- no-transaction\nPRAGMA foreign_keys=OFF;\nBEGIN;\nSELECT 1;\nCOMMIT;"),
            "dirty protocol: the file starts with `-- no-transaction`"
        );
    }

    #[test]
    fn which_files_can_share_a_transaction() {
        let m = |sql: &str| SqlFile::parse("x.sql", sql.to_owned()).mode;
        let plain = m("CREATE TABLE a (x int);");
        let own = m("BEGIN;\nCREATE TABLE a (x int);\nCOMMIT;");
        let wrapped = m(TABLE_CHANGE);
        let spelled = m(
            "PRAGMA foreign_keys = off;\nBEGIN;\nDROP TABLE z;\nCOMMIT;\npragma FOREIGN_KEYS = ON;",
        );
        let other = m("PRAGMA foreign_keys=OFF;\nBEGIN;\nDROP TABLE z;\nCOMMIT;");
        // The trailing pragma sets something the leading ones did not.
        let resets_more = m("PRAGMA foreign_keys=OFF;\nBEGIN;\nDROP TABLE z;\nCOMMIT;\nPRAGMA legacy_alter_table=OFF;");
        let vacuum = m("VACUUM;");
        assert!(plain.can_share_transaction_with(&own));
        assert!(wrapped.can_share_transaction_with(&spelled));
        assert!(!plain.can_share_transaction_with(&wrapped));
        assert!(!wrapped.can_share_transaction_with(&own));
        assert!(!wrapped.can_share_transaction_with(&other));
        assert!(!resets_more.can_share_transaction_with(&resets_more));
        assert!(!plain.can_share_transaction_with(&vacuum));
    }
}
