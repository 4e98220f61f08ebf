//! Splitting input into lines with a cap on their length, so that one huge or endless line
//! cannot exhaust memory: past the cap the rest of the line is read and dropped, and the caller
//! learns how long it was.

use std::io::{self, BufRead, BufReader, Read};

/// One line read by [`LineReader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// A whole line is in the buffer, without its `\n`.
    Complete,
    /// The line was longer than the cap; it held this many bytes and was dropped.
    TooLong(usize),
}

/// Reads capped lines from any [`Read`], through a 64 KiB buffer.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: BufReader<R>,
    cap: usize,
}

impl<R: Read> LineReader<R> {
    /// Reads from `inner`; lines longer than `cap` bytes are dropped.
    pub fn new(inner: R, cap: usize) -> Self {
        Self::with_buffer(inner, cap, 1 << 16)
    }

    /// As [`LineReader::new`], with a read buffer of `buffer` bytes.
    pub fn with_buffer(inner: R, cap: usize, buffer: usize) -> Self {
        LineReader {
            inner: BufReader::with_capacity(buffer, inner),
            cap,
        }
    }

    /// Reads the next line into `line` (cleared first). `None` at the end of input. A last line
    /// without `\n` counts as a line.
    ///
    /// # Errors
    /// The reader's error.
    pub fn next_line(&mut self, line: &mut Vec<u8>) -> io::Result<Option<Line>> {
        line.clear();
        let mut seen = 0usize;
        let mut any = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                return Ok(any.then(|| Self::finish(seen, self.cap)));
            }
            any = true;
            let (chunk, done) = match memchr::memchr(b'\n', available) {
                Some(at) => (&available[..at], Some(at + 1)),
                None => (available, None),
            };
            let room = (self.cap + 1).saturating_sub(line.len());
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            seen += chunk.len();
            let used = done.unwrap_or(chunk.len());
            self.inner.consume(used);
            if done.is_some() {
                return Ok(Some(Self::finish(seen, self.cap)));
            }
        }
    }

    fn finish(seen: usize, cap: usize) -> Line {
        if seen > cap {
            Line::TooLong(seen)
        } else {
            Line::Complete
        }
    }

    /// Whether input is already buffered: when not, the next read may block, so this is the
    /// moment to flush replies.
    pub fn has_buffered(&self) -> bool {
        !self.inner.buffer().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], cap: usize) -> Vec<(Line, Vec<u8>)> {
        let mut reader = LineReader::with_buffer(input, cap, 4);
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while let Some(kind) = reader.next_line(&mut line).unwrap() {
            lines.push((kind, line.clone()));
        }
        lines
    }

    #[test]
    fn splits_across_buffer_refills_and_keeps_last_unterminated_line() {
        let lines = read_all(b"abcdefg\n\nxy", 100);
        assert_eq!(
            lines,
            vec![
                (Line::Complete, b"abcdefg".to_vec()),
                (Line::Complete, b"".to_vec()),
                (Line::Complete, b"xy".to_vec()),
            ]
        );
    }

    #[test]
    fn drops_long_lines_but_reads_past_them() {
        let lines = read_all(b"0123456789\nok\n", 5);
        assert_eq!(lines[0].0, Line::TooLong(10));
        assert!(lines[0].1.len() <= 6);
        assert_eq!(lines[1], (Line::Complete, b"ok".to_vec()));
        assert_eq!(read_all(b"12345\n", 5)[0].0, Line::Complete);
    }
}
