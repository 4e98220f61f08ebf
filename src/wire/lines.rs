//! Splitting input into lines with a cap on their length, so that one huge or endless line
//! cannot exhaust memory: past the cap the rest of the line is read and dropped, and the caller
//! learns how long it was. [`LineSplitter`] takes input in chunks as they arrive.

/// Splits chunks of input into capped lines. A line wholly inside one chunk is handed out
/// without copying; a line that spans chunks is gathered (up to the cap).
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    /// Bytes of the current partial line seen, including those dropped past the cap.
    seen: usize,
    cap: usize,
}

/// One line from a [`LineSplitter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A whole line, without its `\n`.
    Line(&'a [u8]),
    /// A line longer than the cap, of this many bytes, dropped.
    TooLong(usize),
}

impl LineSplitter {
    /// A splitter dropping lines longer than `cap` bytes.
    pub fn new(cap: usize) -> Self {
        LineSplitter {
            partial: Vec::new(),
            seen: 0,
            cap,
        }
    }

    /// Splits `chunk`, handing each complete line to `each`.
    pub fn push(&mut self, mut chunk: &[u8], mut each: impl FnMut(Piece<'_>)) {
        while let Some(at) = memchr::memchr(b'\n', chunk) {
            let (line, rest) = (&chunk[..at], &chunk[at + 1..]);
            if self.seen == 0 {
                if line.len() > self.cap {
                    each(Piece::TooLong(line.len()));
                } else {
                    each(Piece::Line(line));
                }
            } else {
                self.gather(line);
                self.emit(&mut each);
            }
            chunk = rest;
        }
        if !chunk.is_empty() {
            self.gather(chunk);
        }
    }

    /// The end of input: a last line without `\n` counts as a line.
    pub fn finish(&mut self, mut each: impl FnMut(Piece<'_>)) {
        if self.seen > 0 {
            self.emit(&mut each);
        }
    }

    fn gather(&mut self, bytes: &[u8]) {
        let room = (self.cap + 1).saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.seen += bytes.len();
    }

    fn emit(&mut self, each: &mut impl FnMut(Piece<'_>)) {
        if self.seen > self.cap {
            each(Piece::TooLong(self.seen));
        } else {
            each(Piece::Line(&self.partial));
        }
        self.partial.clear();
        self.seen = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, BufRead, BufReader, Read};

    // A line reader pulling from any `Read`: the reference the splitter is checked against.
    /// One line read by [`LineReader`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Line {
        /// A whole line is in the buffer, without its `\n`.
        Complete,
        /// The line was longer than the cap; it held this many bytes and was dropped.
        TooLong(usize),
    }

    /// Reads capped lines from any [`Read`], through a 64 KiB buffer.
    #[derive(Debug)]
    struct LineReader<R> {
        inner: BufReader<R>,
        cap: usize,
    }

    impl<R: Read> LineReader<R> {
        /// Reads from `inner` through a buffer of `buffer` bytes; longer lines than `cap` are
        /// dropped.
        fn with_buffer(inner: R, cap: usize, buffer: usize) -> Self {
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
        fn next_line(&mut self, line: &mut Vec<u8>) -> io::Result<Option<Line>> {
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
    }

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

    fn split_all(input: &[u8], cap: usize, chunk: usize) -> Vec<(Line, Vec<u8>)> {
        let mut splitter = LineSplitter::new(cap);
        let mut lines = Vec::new();
        let mut take = |piece: Piece<'_>| {
            lines.push(match piece {
                Piece::Line(line) => (Line::Complete, line.to_vec()),
                Piece::TooLong(n) => (Line::TooLong(n), Vec::new()),
            })
        };
        for part in input.chunks(chunk.max(1)) {
            splitter.push(part, &mut take);
        }
        splitter.finish(&mut take);
        lines
    }

    proptest::proptest! {
        /// The splitter agrees with the reader for any chunking.
        #[test]
        fn splitter_agrees_with_the_reader(
            input in proptest::collection::vec(proptest::sample::select(vec![b'a', b'b', b'\n', b'\r']), 0..64),
            cap in 0usize..8,
            chunk in 1usize..9,
        ) {
            let read: Vec<(Line, Option<Vec<u8>>)> = read_all(&input, cap)
                .into_iter()
                .map(|(kind, line)| (kind, (kind == Line::Complete).then_some(line)))
                .collect();
            let split: Vec<(Line, Option<Vec<u8>>)> = split_all(&input, cap, chunk)
                .into_iter()
                .map(|(kind, line)| (kind, (kind == Line::Complete).then_some(line)))
                .collect();
            proptest::prop_assert_eq!(read, split);
        }
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
