//! RESP2 as a client reads it: a streaming parser for what a Redis server
//! answers (`+OK`, `-ERR ...`, `:5`, `$3 abc`, `*3 message ch payload`), and an
//! encoder for the same values. The cluster broker uses it on its connections to
//! Redis; the control port's request side is `resp`.
//!
//! Pure: bytes in, values out, no I/O. It must never panic on any input, never
//! recurse (nesting is an explicit stack, at most `max_depth` deep), and never
//! allocate more than the bytes it was given justify: a `*1000000000` or
//! `$999999999` header allocates nothing until the elements or the data are
//! actually there. It must never scan the same bytes twice either: the parser
//! remembers where it stopped, and a bulk body is skipped by its length, so a
//! multi-megabyte reply arriving in 64 KiB reads costs one pass, not one per read.
//! Anything outside RESP2 (RESP3's `%`, `_`, `#`, ... included) is a
//! [`ProtocolError`]; after one the stream cannot be trusted and the caller drops
//! the connection.

use std::io::Write;

use super::resp::{self, number_line, ProtocolError};

/// One reply from a RESP2 server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: the text after `+`.
    Simple(Vec<u8>),
    /// `-ERR ...`: the text after `-`, error code first.
    Error(Vec<u8>),
    /// `:5`.
    Integer(i64),
    /// `$3\r\nabc` is `Some`, `$-1` (nil) is `None`.
    Bulk(Option<Vec<u8>>),
    /// `*2 ...` is `Some`, `*-1` (nil) is `None`.
    Array(Option<Vec<Reply>>),
}

/// What one reply may hold before the parser gives up on the connection.
///
/// Together they bound a reply: at most `max_elements` values, each string at
/// most `max_bulk` bytes. Redis itself never nests deeper than 2 or 3 for what
/// the broker sends, so a small `max_depth` (say 8) costs nothing and also
/// bounds the recursion of `Drop`, `Clone` and `PartialEq` on a parsed `Reply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyLimits {
    /// The longest bulk string, and the longest simple-string or error line.
    pub max_bulk: usize,
    /// The most elements all the arrays of one reply may announce together
    /// (not per array, so nesting cannot multiply it).
    pub max_elements: usize,
    /// The most arrays nested inside one another: 1 allows
    /// `*3 message ch payload` but no array inside it; 0 allows no array.
    pub max_depth: usize,
}

/// The shortest encoded element (`+\r\n`): the most elements a number of
/// buffered bytes can hold, so an array's storage grows with its bytes, not
/// with what its header claims.
const MIN_ELEMENT_LEN: usize = 3;

/// A streaming reply parser, one per connection to a server.
///
/// The caller owns the buffer: it appends what it reads, calls
/// [`ReplyParser::parse`] on the unconsumed bytes, and drains the bytes a
/// complete reply took. Until a reply completes it must pass the same bytes
/// back (with more appended): the parser keeps the elements already parsed and
/// resumes where it stopped.
#[derive(Debug)]
pub struct ReplyParser {
    /// The limits this connection was opened with.
    limits: ReplyLimits,
    /// Offset in the caller's buffer of the next element's type byte; the
    /// bytes before it are already in `open`.
    pos: usize,
    /// How far the `+` / `-` line starting at `pos` has been searched for its
    /// end without finding it (0: not started).
    line_scanned: usize,
    /// The arrays still collecting elements, outermost first.
    open: Vec<OpenArray>,
    /// Elements announced by the arrays of the reply being parsed, so far.
    elements: usize,
}

/// An array whose header is parsed and whose elements are still arriving.
#[derive(Debug)]
struct OpenArray {
    /// Elements still to come (at least 1 while the array is open).
    left: usize,
    /// The elements so far.
    items: Vec<Reply>,
}

/// What the element at `pos` turned out to be.
enum Element {
    /// A complete value.
    Value(Reply),
    /// The header of an array of this many (at least 1) elements.
    Open(usize),
}

impl ReplyParser {
    /// A parser at the start of a stream.
    pub fn new(limits: ReplyLimits) -> Self {
        ReplyParser {
            limits,
            pos: 0,
            line_scanned: 0,
            open: Vec::new(),
            elements: 0,
        }
    }

    /// Ok(Some((consumed, reply))) for one complete reply at the start of buf,
    /// Ok(None) if incomplete (caller appends more and calls again with the same
    /// unconsumed bytes), Err on malformed input or a limit exceeded (caller drops
    /// the connection).
    ///
    /// Pipelined replies come one per call: after `Some`, the caller drains
    /// `consumed` bytes and calls again.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<(usize, Reply)>, ProtocolError> {
        if buf.len() < self.pos {
            // Not the bytes this parser has seen: the caller broke the contract.
            // Starting over is right if it began a new buffer, and harmless
            // otherwise (the same input gives the same error or reply).
            self.reset();
        }
        loop {
            let (next, element) = match self.element(buf) {
                Ok(Some(found)) => found,
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.reset();
                    return Err(e);
                }
            };
            self.pos = next;
            self.line_scanned = 0;
            let mut done = match element {
                Element::Value(reply) => reply,
                Element::Open(len) => {
                    let room = buf.len().saturating_sub(next) / MIN_ELEMENT_LEN;
                    self.open.push(OpenArray {
                        left: len,
                        items: Vec::with_capacity(len.min(room)),
                    });
                    continue;
                }
            };
            // Fold the value into the arrays it completes, innermost first.
            loop {
                let Some(top) = self.open.last_mut() else {
                    let consumed = self.pos;
                    self.reset();
                    return Ok(Some((consumed, done)));
                };
                top.items.push(done);
                top.left -= 1;
                if top.left > 0 {
                    break;
                }
                let items = self.open.pop().map(|a| a.items).unwrap_or_default();
                done = Reply::Array(Some(items));
            }
        }
    }

    /// Back to a reply boundary at the start of the buffer.
    fn reset(&mut self) {
        self.pos = 0;
        self.line_scanned = 0;
        self.open.clear();
        self.elements = 0;
    }

    /// Parses the element at `pos`: the offset after it and what it is, or
    /// `None` if it is not complete in `buf` yet.
    fn element(&mut self, buf: &[u8]) -> Result<Option<(usize, Element)>, ProtocolError> {
        let at = self.pos;
        let Some(&kind) = buf.get(at) else {
            return Ok(None);
        };
        let value = |found: Option<(usize, Reply)>| found.map(|(n, r)| (n, Element::Value(r)));
        match kind {
            b'+' => Ok(value(
                self.line(buf, at)?.map(|(n, s)| (n, Reply::Simple(s))),
            )),
            b'-' => Ok(value(
                self.line(buf, at)?.map(|(n, s)| (n, Reply::Error(s))),
            )),
            b':' => Ok(value(
                number_line(buf, at, "invalid integer")?.map(|(i, n)| (n, Reply::Integer(i))),
            )),
            b'$' => Ok(value(self.bulk(buf, at)?)),
            b'*' => self.array_header(buf, at),
            _ => Err(ProtocolError("unknown reply type")),
        }
    }

    /// A `+` or `-` line: its text and the offset after its `\r\n`.
    fn line(&mut self, buf: &[u8], at: usize) -> Result<Option<(usize, Vec<u8>)>, ProtocolError> {
        let text = at + 1;
        // The '\r' must come within max_bulk bytes of the text's start; deciding
        // by that, not by how much is buffered, keeps the outcome split-independent.
        let window = buf
            .len()
            .min(text.saturating_add(self.limits.max_bulk).saturating_add(1));
        let from = self.line_scanned.max(text).min(window);
        let Some(found) = buf
            .get(from..window)
            .and_then(|w| w.iter().position(|&b| b == b'\r' || b == b'\n'))
        else {
            // The window stops one past the longest text, so a full window
            // without a '\r' is a line over the limit.
            if window - text > self.limits.max_bulk {
                return Err(ProtocolError("reply line too long"));
            }
            self.line_scanned = window;
            return Ok(None);
        };
        let end = from + found;
        if buf.get(end) == Some(&b'\n') {
            return Err(ProtocolError("expected CRLF at end of line"));
        }
        match buf.get(end + 1) {
            None => {
                // Only the '\r' is here; look at it again with the next bytes.
                self.line_scanned = end;
                Ok(None)
            }
            Some(b'\n') => Ok(Some((end + 2, buf[text..end].to_vec()))),
            Some(_) => Err(ProtocolError("expected CRLF at end of line")),
        }
    }

    /// A `$` bulk string. Its header is re-read on each call until the data is
    /// all there (at most 22 bytes); the data itself is only looked at once.
    fn bulk(&self, buf: &[u8], at: usize) -> Result<Option<(usize, Reply)>, ProtocolError> {
        let Some((len, start)) = number_line(buf, at, "invalid bulk length")? else {
            return Ok(None);
        };
        if len == -1 {
            return Ok(Some((start, Reply::Bulk(None))));
        }
        let len = usize::try_from(len).map_err(|_| ProtocolError("invalid bulk length"))?;
        if len > self.limits.max_bulk {
            return Err(ProtocolError("bulk reply too large"));
        }
        let end = start
            .checked_add(len)
            .ok_or(ProtocolError("bulk reply too large"))?;
        match (buf.get(end), buf.get(end + 1)) {
            (None, _) | (Some(b'\r'), None) => Ok(None),
            (Some(b'\r'), Some(b'\n')) => {
                Ok(Some((end + 2, Reply::Bulk(Some(buf[start..end].to_vec())))))
            }
            _ => Err(ProtocolError("expected CRLF after bulk data")),
        }
    }

    /// A `*` header: a nil or empty array is a value, anything longer opens one.
    fn array_header(
        &mut self,
        buf: &[u8],
        at: usize,
    ) -> Result<Option<(usize, Element)>, ProtocolError> {
        let Some((len, next)) = number_line(buf, at, "invalid multibulk length")? else {
            return Ok(None);
        };
        if self.open.len() >= self.limits.max_depth {
            return Err(ProtocolError("reply nested too deeply"));
        }
        if len == -1 {
            return Ok(Some((next, Element::Value(Reply::Array(None)))));
        }
        let len = usize::try_from(len).map_err(|_| ProtocolError("invalid multibulk length"))?;
        let elements = self
            .elements
            .checked_add(len)
            .filter(|&n| n <= self.limits.max_elements)
            .ok_or(ProtocolError("too many elements in reply"))?;
        if len == 0 {
            return Ok(Some((next, Element::Value(Reply::Array(Some(Vec::new()))))));
        }
        self.elements = elements;
        Ok(Some((next, Element::Open(len))))
    }
}

/// Appends `reply` as a RESP2 server sends it. `\r` or `\n` in a simple string
/// or error become spaces, as `resp::write_simple` does, so the framing holds.
/// Iterative, so any depth of hand-built tree is fine.
pub fn write_reply(out: &mut Vec<u8>, reply: &Reply) {
    let mut open: Vec<std::slice::Iter<'_, Reply>> = Vec::new();
    let mut next = Some(reply);
    loop {
        let reply = match next.take() {
            Some(reply) => reply,
            None => match open.last_mut() {
                None => return,
                Some(items) => match items.next() {
                    Some(reply) => reply,
                    None => {
                        open.pop();
                        continue;
                    }
                },
            },
        };
        match reply {
            Reply::Simple(s) => write_line(out, b'+', s),
            Reply::Error(s) => write_line(out, b'-', s),
            Reply::Integer(n) => resp::write_integer(out, *n),
            Reply::Bulk(Some(b)) => resp::write_bulk(out, b),
            Reply::Bulk(None) => resp::write_null(out),
            Reply::Array(None) => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(Some(items)) => {
                // Writing to a Vec cannot fail.
                let _ = write!(out, "*{}\r\n", items.len());
                open.push(items.iter());
            }
        }
    }
}

fn write_line(out: &mut Vec<u8>, kind: u8, s: &[u8]) {
    out.push(kind);
    out.extend(
        s.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: ReplyLimits = ReplyLimits {
        max_bulk: 1024,
        max_elements: 64,
        max_depth: 4,
    };

    /// Drives a parser the way a connection does: append each chunk, parse
    /// until it asks for more, drain what a reply consumed. Returns the replies
    /// and the error that ended the stream, if any.
    fn drive(limits: ReplyLimits, chunks: &[&[u8]]) -> (Vec<Reply>, Option<ProtocolError>) {
        let mut parser = ReplyParser::new(limits);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match parser.parse(&buf) {
                    Ok(Some((n, reply))) => {
                        assert!(n > 0 && n <= buf.len(), "consumed {n} of {}", buf.len());
                        buf.drain(..n);
                        out.push(reply);
                    }
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    fn whole(input: &[u8]) -> (Vec<Reply>, Option<ProtocolError>) {
        drive(LIMITS, &[input])
    }

    fn one(input: &[u8]) -> Reply {
        match whole(input) {
            (mut replies, None) if replies.len() == 1 => replies.remove(0),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    fn error_of(limits: ReplyLimits, input: &[u8]) -> &'static str {
        match drive(limits, &[input]).1 {
            Some(ProtocolError(msg)) => msg,
            None => panic!("no error for {:?}", String::from_utf8_lossy(input)),
        }
    }

    fn bulk(b: &[u8]) -> Reply {
        Reply::Bulk(Some(b.to_vec()))
    }

    fn array(items: Vec<Reply>) -> Reply {
        Reply::Array(Some(items))
    }

    /// Every reply type, nested arrays and the pub/sub shapes, pipelined.
    const SAMPLE: &[u8] = b"+OK\r\n-ERR unknown command 'FOO'\r\n:0\r\n:-42\r\n\
        $5\r\nhe\r\no\r\n$0\r\n\r\n$-1\r\n*0\r\n*-1\r\n\
        *3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n\
        *3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n\
        *2\r\n*2\r\n:1\r\n+a\r\n*1\r\n*-1\r\n";

    fn sample_replies() -> Vec<Reply> {
        vec![
            Reply::Simple(b"OK".to_vec()),
            Reply::Error(b"ERR unknown command 'FOO'".to_vec()),
            Reply::Integer(0),
            Reply::Integer(-42),
            bulk(b"he\r\no"),
            bulk(b""),
            Reply::Bulk(None),
            array(vec![]),
            Reply::Array(None),
            array(vec![bulk(b"message"), bulk(b"ch"), bulk(b"hello")]),
            array(vec![bulk(b"subscribe"), bulk(b"ch"), Reply::Integer(1)]),
            array(vec![
                array(vec![Reply::Integer(1), Reply::Simple(b"a".to_vec())]),
                array(vec![Reply::Array(None)]),
            ]),
        ]
    }

    #[test]
    fn parses_simple_string() {
        let mut parser = ReplyParser::new(LIMITS);
        assert_eq!(
            parser.parse(b"+OK\r\n"),
            Ok(Some((5, Reply::Simple(b"OK".to_vec()))))
        );
        assert_eq!(one(b"+\r\n"), Reply::Simple(Vec::new()));
    }

    #[test]
    fn parses_error_without_the_dash() {
        assert_eq!(
            one(b"-WRONGPASS invalid username-password pair\r\n"),
            Reply::Error(b"WRONGPASS invalid username-password pair".to_vec())
        );
    }

    #[test]
    fn parses_integers_including_extremes() {
        assert_eq!(one(b":5\r\n"), Reply::Integer(5));
        assert_eq!(one(b":-9223372036854775808\r\n"), Reply::Integer(i64::MIN));
        assert_eq!(one(b":9223372036854775807\r\n"), Reply::Integer(i64::MAX));
    }

    #[test]
    fn parses_bulk_empty_bulk_and_nil() {
        assert_eq!(one(b"$3\r\nabc\r\n"), bulk(b"abc"));
        assert_eq!(one(b"$0\r\n\r\n"), bulk(b""));
        assert_eq!(one(b"$-1\r\n"), Reply::Bulk(None));
        // Binary data, CRLF included, is taken by length.
        assert_eq!(one(b"$4\r\n\r\n\0\xff\r\n"), bulk(b"\r\n\0\xff"));
    }

    #[test]
    fn parses_arrays_empty_arrays_and_nil() {
        assert_eq!(
            one(b"*2\r\n$4\r\nLLEN\r\n:7\r\n"),
            array(vec![bulk(b"LLEN"), Reply::Integer(7)])
        );
        assert_eq!(one(b"*0\r\n"), array(vec![]));
        assert_eq!(one(b"*-1\r\n"), Reply::Array(None));
    }

    #[test]
    fn parses_pubsub_message_and_subscribe_confirmation() {
        assert_eq!(
            one(b"*3\r\n$7\r\nmessage\r\n$11\r\nwspush:room\r\n$2\r\nhi\r\n"),
            array(vec![bulk(b"message"), bulk(b"wspush:room"), bulk(b"hi")])
        );
        assert_eq!(
            one(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"),
            array(vec![bulk(b"subscribe"), bulk(b"ch"), Reply::Integer(1)])
        );
    }

    #[test]
    fn parses_nested_arrays() {
        assert_eq!(
            one(b"*2\r\n*1\r\n*1\r\n:1\r\n*0\r\n"),
            array(vec![
                array(vec![array(vec![Reply::Integer(1)])]),
                array(vec![])
            ])
        );
    }

    #[test]
    fn parses_pipelined_replies_one_per_call_in_order() {
        assert_eq!(whole(SAMPLE), (sample_replies(), None));
        let mut parser = ReplyParser::new(LIMITS);
        assert_eq!(
            parser.parse(b"+OK\r\n:1\r\n"),
            Ok(Some((5, Reply::Simple(b"OK".to_vec()))))
        );
    }

    #[test]
    fn same_replies_when_split_at_every_byte() {
        for cut in 0..=SAMPLE.len() {
            let (a, b) = SAMPLE.split_at(cut);
            assert_eq!(
                drive(LIMITS, &[a, b]),
                (sample_replies(), None),
                "cut {cut}"
            );
        }
        let bytes: Vec<&[u8]> = SAMPLE.chunks(1).collect();
        assert_eq!(drive(LIMITS, &bytes), (sample_replies(), None));
    }

    #[test]
    fn incomplete_reply_consumes_nothing_and_keeps_its_elements() {
        let mut parser = ReplyParser::new(LIMITS);
        let mut buf = b"*2\r\n$3\r\nabc\r\n$2\r\nx".to_vec();
        assert_eq!(parser.parse(&buf), Ok(None));
        assert_eq!(parser.open.len(), 1);
        assert_eq!(parser.open[0].items, vec![bulk(b"abc")]);
        buf.extend_from_slice(b"y\r\n");
        assert_eq!(
            parser.parse(&buf),
            Ok(Some((buf.len(), array(vec![bulk(b"abc"), bulk(b"xy")]))))
        );
    }

    #[test]
    fn a_line_arriving_in_pieces_is_searched_once() {
        let mut parser = ReplyParser::new(LIMITS);
        assert_eq!(parser.parse(b"+abcd"), Ok(None));
        assert_eq!(parser.line_scanned, 5);
        assert_eq!(parser.parse(b"+abcdef\r"), Ok(None));
        // The '\r' is looked at again once its '\n' can be there.
        assert_eq!(parser.line_scanned, 7);
        assert_eq!(
            parser.parse(b"+abcdef\r\n"),
            Ok(Some((9, Reply::Simple(b"abcdef".to_vec()))))
        );
    }

    #[test]
    fn a_large_bulk_in_64k_reads_is_taken_whole() {
        let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| i as u8).collect();
        let mut input = Vec::new();
        write_reply(
            &mut input,
            &array(vec![bulk(b"message"), bulk(b"c"), bulk(&data)]),
        );
        let limits = ReplyLimits {
            max_bulk: data.len(),
            ..LIMITS
        };
        let chunks: Vec<&[u8]> = input.chunks(64 * 1024).collect();
        assert_eq!(
            drive(limits, &chunks),
            (
                vec![array(vec![bulk(b"message"), bulk(b"c"), bulk(&data)])],
                None
            )
        );
    }

    #[test]
    fn huge_headers_allocate_nothing_up_front() {
        let limits = ReplyLimits {
            max_bulk: usize::MAX,
            max_elements: usize::MAX,
            max_depth: 4,
        };
        let mut parser = ReplyParser::new(limits);
        assert_eq!(parser.parse(b"*1000000000\r\n"), Ok(None));
        assert_eq!(parser.open[0].items.capacity(), 0);
        assert_eq!(parser.parse(b"*1000000000\r\n$999999999\r\nab"), Ok(None));
        assert_eq!(parser.open[0].items.capacity(), 0);
        let mut parser = ReplyParser::new(limits);
        assert_eq!(parser.parse(b"$999999999\r\nabc"), Ok(None));
        assert!(parser.open.is_empty());
    }

    #[test]
    fn bulk_over_max_bulk_is_an_error_at_its_header() {
        let limits = ReplyLimits {
            max_bulk: 4,
            ..LIMITS
        };
        assert_eq!(one_with(limits, b"$4\r\nabcd\r\n"), bulk(b"abcd"));
        assert_eq!(error_of(limits, b"$5\r\n"), "bulk reply too large");
    }

    fn one_with(limits: ReplyLimits, input: &[u8]) -> Reply {
        match drive(limits, &[input]) {
            (mut replies, None) if replies.len() == 1 => replies.remove(0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn line_over_max_bulk_is_an_error_before_its_end_arrives() {
        let limits = ReplyLimits {
            max_bulk: 4,
            ..LIMITS
        };
        assert_eq!(
            one_with(limits, b"+abcd\r\n"),
            Reply::Simple(b"abcd".to_vec())
        );
        assert_eq!(error_of(limits, b"-abcde"), "reply line too long");
        assert_eq!(error_of(limits, b"+abcde\r\n"), "reply line too long");
        let bytes: Vec<&[u8]> = b"+abcde".chunks(1).collect();
        assert_eq!(
            drive(limits, &bytes).1,
            Some(ProtocolError("reply line too long"))
        );
    }

    #[test]
    fn elements_of_all_arrays_together_are_limited() {
        let limits = ReplyLimits {
            max_elements: 3,
            ..LIMITS
        };
        assert_eq!(
            one_with(limits, b"*3\r\n:1\r\n:2\r\n:3\r\n"),
            array(vec![
                Reply::Integer(1),
                Reply::Integer(2),
                Reply::Integer(3)
            ])
        );
        assert_eq!(error_of(limits, b"*4\r\n"), "too many elements in reply");
        // 2 + 2 nested: each array is small, together they are not.
        assert_eq!(
            error_of(limits, b"*2\r\n*2\r\n:1\r\n:2\r\n*0\r\n"),
            "too many elements in reply"
        );
        // The count starts again with each reply.
        assert_eq!(
            drive(
                limits,
                &[b"*3\r\n:1\r\n:2\r\n:3\r\n*3\r\n:1\r\n:2\r\n:3\r\n"]
            )
            .0
            .len(),
            2
        );
    }

    #[test]
    fn arrays_nested_deeper_than_max_depth_are_an_error() {
        let limits = ReplyLimits {
            max_depth: 2,
            ..LIMITS
        };
        assert_eq!(
            one_with(limits, b"*1\r\n*1\r\n:1\r\n"),
            array(vec![array(vec![Reply::Integer(1)])])
        );
        for deep in [
            &b"*1\r\n*1\r\n*1\r\n:1\r\n"[..],
            b"*1\r\n*1\r\n*0\r\n",
            b"*1\r\n*1\r\n*-1\r\n",
        ] {
            assert_eq!(error_of(limits, deep), "reply nested too deeply");
        }
        let flat = ReplyLimits {
            max_depth: 0,
            ..LIMITS
        };
        assert_eq!(one_with(flat, b":1\r\n"), Reply::Integer(1));
        assert_eq!(error_of(flat, b"*0\r\n"), "reply nested too deeply");
    }

    #[test]
    fn a_million_nested_arrays_stop_at_max_depth() {
        let input = b"*1\r\n".repeat(1_000_000);
        assert_eq!(error_of(LIMITS, &input), "reply nested too deeply");
    }

    #[test]
    fn rejects_types_outside_resp2() {
        // RESP3's map, null, boolean, double, big number, verbatim, push.
        for kind in [
            b'%', b'_', b'#', b',', b'(', b'=', b'>', b'~', b'|', b'!', b'x',
        ] {
            assert_eq!(
                error_of(LIMITS, &[kind, b'\r', b'\n']),
                "unknown reply type"
            );
        }
    }

    #[test]
    fn rejects_malformed_numbers() {
        for bad in [
            &b":\r\n"[..],
            b":1a\r\n",
            b":007\r\n",
            b":-0\r\n",
            b":1\rx",
            b":99999999999999999999\r\n",
        ] {
            assert_eq!(
                error_of(LIMITS, bad),
                "invalid integer",
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for bad in [&b"$-2\r\n"[..], b"$x\r\n", b"$\r\n"] {
            assert_eq!(error_of(LIMITS, bad), "invalid bulk length");
        }
        for bad in [&b"*-2\r\n"[..], b"*1x\r\n"] {
            assert_eq!(error_of(LIMITS, bad), "invalid multibulk length");
        }
    }

    #[test]
    fn rejects_bad_line_endings() {
        assert_eq!(
            error_of(LIMITS, b"$3\r\nabcXY"),
            "expected CRLF after bulk data"
        );
        assert_eq!(
            error_of(LIMITS, b"$3\r\nabc\rX"),
            "expected CRLF after bulk data"
        );
        assert_eq!(error_of(LIMITS, b"+OK\n"), "expected CRLF at end of line");
        assert_eq!(
            error_of(LIMITS, b"+O\rK\r\n"),
            "expected CRLF at end of line"
        );
    }

    #[test]
    fn after_an_error_the_parser_starts_clean() {
        let mut parser = ReplyParser::new(LIMITS);
        assert!(parser.parse(b"*2\r\n:1\r\n%").is_err());
        assert_eq!(parser.parse(b":7\r\n"), Ok(Some((4, Reply::Integer(7)))));
    }

    #[test]
    fn a_shorter_buffer_than_before_starts_over_instead_of_panicking() {
        let mut parser = ReplyParser::new(LIMITS);
        assert_eq!(parser.parse(b"*2\r\n:1\r\n:2"), Ok(None));
        assert_eq!(parser.parse(b":9\r\n"), Ok(Some((4, Reply::Integer(9)))));
    }

    #[test]
    fn encoder_writes_what_redis_sends() {
        let mut out = Vec::new();
        for reply in sample_replies() {
            write_reply(&mut out, &reply);
        }
        assert_eq!(out, SAMPLE);
        let mut framed = Vec::new();
        write_reply(&mut framed, &Reply::Error(b"ERR a\r\nb".to_vec()));
        assert_eq!(framed, b"-ERR a  b\r\n");
    }

    #[test]
    fn encoder_handles_any_depth() {
        let mut deep = Reply::Integer(1);
        for _ in 0..100_000 {
            deep = array(vec![deep]);
        }
        let mut out = Vec::new();
        write_reply(&mut out, &deep);
        assert_eq!(out.len(), 100_000 * 4 + 4);
        // Dismantle without recursing (the derived Drop would recurse 100 000 deep).
        let mut stack = vec![deep];
        while let Some(reply) = stack.pop() {
            if let Reply::Array(Some(items)) = reply {
                stack.extend(items);
            }
        }
    }

    /// Arbitrary reply trees at most 4 arrays deep.
    fn reply_tree() -> impl Strategy<Value = Reply> {
        let line = prop::collection::vec(any::<u8>(), 0..12).prop_map(|v| {
            v.into_iter()
                .filter(|&b| b != b'\r' && b != b'\n')
                .collect()
        });
        let leaf = prop_oneof![
            line.clone().prop_map(Reply::Simple),
            line.prop_map(Reply::Error),
            any::<i64>().prop_map(Reply::Integer),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..24)).prop_map(Reply::Bulk),
            Just(Reply::Array(None)),
        ];
        leaf.prop_recursive(3, 48, 6, |inner| {
            prop::collection::vec(inner, 0..6).prop_map(|v| Reply::Array(Some(v)))
        })
    }

    /// Bytes that look like RESP replies often enough to reach every state.
    fn resp_like() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            Just(b"*".to_vec()),
            Just(b"$".to_vec()),
            Just(b"+".to_vec()),
            Just(b"-".to_vec()),
            Just(b":".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"-1".to_vec()),
            (0u32..40).prop_map(|n| n.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..8),
        ];
        prop::collection::vec(token, 0..64).prop_map(|t| t.concat())
    }

    const TREE_LIMITS: ReplyLimits = ReplyLimits {
        max_bulk: 32,
        max_elements: 1000,
        max_depth: 4,
    };

    const SMALL: ReplyLimits = ReplyLimits {
        max_bulk: 16,
        max_elements: 8,
        max_depth: 3,
    };

    fn split_at(input: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        at.push(0);
        at.push(input.len());
        at.sort_unstable();
        at.windows(2).map(|w| input[w[0]..w[1]].to_vec()).collect()
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_or_overconsume(
            input in prop::collection::vec(any::<u8>(), 0..512),
            chunk in 1usize..64,
        ) {
            let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
            drive(SMALL, &chunks);
        }

        #[test]
        fn resp_like_bytes_never_panic_or_overconsume(input in resp_like(), chunk in 1usize..16) {
            let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
            drive(SMALL, &chunks);
            drive(TREE_LIMITS, &chunks);
        }

        #[test]
        fn encoded_replies_parse_back_to_themselves(reply in reply_tree()) {
            let mut input = Vec::new();
            write_reply(&mut input, &reply);
            let mut parser = ReplyParser::new(TREE_LIMITS);
            prop_assert_eq!(parser.parse(&input), Ok(Some((input.len(), reply))));
        }

        #[test]
        fn any_split_gives_the_same_replies(
            replies in prop::collection::vec(reply_tree(), 0..6),
            tail in prop::option::of(resp_like()),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut input = Vec::new();
            for reply in &replies {
                write_reply(&mut input, reply);
            }
            let whole = drive(TREE_LIMITS, &[&input]);
            prop_assert_eq!(&whole, &(replies.clone(), None));
            input.extend(tail.unwrap_or_default());
            let expected = drive(TREE_LIMITS, &[&input]);
            prop_assert!(expected.0.starts_with(&replies));
            let chunks = split_at(&input, &cuts);
            let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(&drive(TREE_LIMITS, &chunks), &expected);
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            prop_assert_eq!(&drive(TREE_LIMITS, &bytes), &expected);
        }
    }
}
