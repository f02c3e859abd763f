//! RESP2, the Redis wire protocol, as the control port speaks it: a streaming
//! request parser and the reply encoders.
//!
//! Requests come as RESP arrays of bulk strings (`*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n`)
//! or as inline lines (`PING hi\r\n`), pipelined, split across reads at any byte.
//! The parser follows mini-redis's two phases — check that a whole command is
//! buffered, then build it — so "incomplete" is a normal answer, and it follows
//! Redis (`processMultibulkBuffer`, `processInlineBuffer`, `sdssplitargs`) for
//! what is accepted and what is a protocol error.
//!
//! This module is pure: bytes in, values out. It must never panic, never consume
//! part of a normal command, and never allocate more than the bytes it was given
//! justify: a `*1000000000` or `$999999999` header allocates nothing up front,
//! and an argument over the size limit is streamed past instead of buffered, so a
//! control client cannot make the dispatcher hold more than about one message.

use std::fmt;
use std::mem;

/// The longest inline request line, and the slack a multibulk command may carry
/// on top of its largest argument (Redis's `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE: usize = 64 * 1024;

/// The longest bulk string any request may announce, whatever the limits
/// (Redis's `proto-max-bulk-len` default). Longer, or negative, is a protocol
/// error rather than an oversized argument: no honest client sends it.
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;

/// The longest count or length a header line may hold: `-9223372036854775808`.
/// A longer line cannot be a number, so it is rejected without waiting for `\r\n`.
const MAX_NUMBER_LEN: usize = 20;

/// What the parser accepts before it streams an argument past or gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest bulk argument kept in memory: the server's `--max-message`.
    /// A larger one makes the command [`Parsed::TooLarge`]. All bulk arguments of
    /// one command together may hold at most `max_bulk + MAX_INLINE` bytes (room
    /// for a command name, a room and a full-size payload); an argument that
    /// would pass that total is treated as oversized too, so a command of
    /// `max_args` full-size arguments cannot make the dispatcher buffer
    /// `max_args` messages.
    pub max_bulk: usize,
    /// The most arguments one multibulk command may announce; more is a protocol
    /// error.
    pub max_args: usize,
}

/// One complete request taken off the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete command: its arguments (command name first), from a RESP array of bulk
    /// strings or an inline command line.
    Command(Vec<Vec<u8>>),
    /// A complete command one of whose bulk arguments exceeded `max_bulk` (or would
    /// have taken the command's bulk total past `max_bulk + MAX_INLINE`, see
    /// [`Limits::max_bulk`]). Its bytes were
    /// consumed WITHOUT being buffered (streamed past, across calls), so the caller can
    /// reply `-ERR ...` and keep the connection usable. `name` is the first argument if it
    /// was small enough to keep, `len` the oversized length.
    TooLarge { name: Option<Vec<u8>>, len: usize },
}

/// Malformed RESP. The stream cannot be resynchronised after it, so the caller
/// replies [`ProtocolError::message`] and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

impl ProtocolError {
    /// The reply text after the `-`: `ERR protocol error: ...`.
    pub fn message(&self) -> String {
        format!("ERR protocol error: {}", self.0)
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// A streaming request parser, one per control connection.
///
/// The caller owns the buffer: it appends what it reads, calls [`Parser::parse`]
/// on the unconsumed bytes, and drains the bytes `parse` reports consumed. The
/// unconsumed bytes must be passed back unchanged (with new bytes appended):
/// the parser remembers how far it has already checked them, so a command that
/// arrives in many small reads is scanned once, not once per read.
#[derive(Debug)]
pub struct Parser {
    /// The limits this connection was opened with.
    limits: Limits,
    /// Where the parser is between calls.
    state: State,
    /// Data ranges (start, end), relative to the command's first byte, of the
    /// bulk arguments of the multibulk being checked. Reused across commands so
    /// a pipelined stream allocates it once.
    spans: Vec<(usize, usize)>,
}

#[derive(Debug)]
enum State {
    /// At a command boundary. The first `inline_scanned` bytes of the buffer are
    /// part of an inline line already searched for `\n` without success.
    Idle { inline_scanned: usize },
    /// Checking a multibulk of `argc` arguments; `spans` holds the ones already
    /// complete and `next` is the offset of the next argument's `$` header.
    Multibulk {
        argc: usize,
        next: usize,
        bulk_bytes: usize,
    },
    /// Streaming past a command with an oversized argument.
    Skipping(Skip),
}

/// Progress through a command that is being discarded, not buffered.
#[derive(Debug)]
struct Skip {
    /// The command's first argument, if it was complete and kept.
    name: Option<Vec<u8>>,
    /// The oversized length that sent the command here.
    len: usize,
    /// Arguments after the current one still to skip.
    args_left: usize,
    /// What the next byte belongs to.
    phase: SkipPhase,
}

#[derive(Debug, Clone, Copy)]
enum SkipPhase {
    /// The `$<len>\r\n` header of the next argument.
    Header,
    /// This many data bytes of the current argument remain.
    Body(usize),
    /// The `\r` after the data.
    Cr,
    /// The `\n` after the data.
    Lf,
}

/// What one step of the state machine did with the bytes after `consumed`.
enum Step {
    /// Consumed this many bytes and needs more input to go on.
    More(usize),
    /// Consumed this many bytes (perhaps 0 on a state change) and can go on.
    Continue(usize),
    /// Consumed this many bytes and completed a request.
    Done(usize, Parsed),
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new(limits: Limits) -> Self {
        Parser {
            limits,
            state: State::Idle { inline_scanned: 0 },
            spans: Vec::new(),
        }
    }

    /// Parses from the start of `buf`. Returns how many bytes of `buf` it consumed (the
    /// caller drains them) and the command, if one completed. Ok((0, None)) / Ok((n, None))
    /// mean "need more bytes" (n > 0 only while streaming past an oversized bulk). Call
    /// again in a loop while it returns Some. Never consumes a partial normal command
    /// (except oversized bulk bytes), never panics, never allocates more than the input
    /// justifies (a `*1000000000` header or `$999999999` must not allocate up front).
    ///
    /// Requests that produce no command (`*0`, `*-1`, an empty inline line) are
    /// consumed silently, so `n > 0` with `None` also follows those.
    /// Streaming past an oversized argument: the bytes already passed over are gone,
    /// so the buffer alone no longer says where the next command starts.
    pub fn skipping(&self) -> bool {
        matches!(self.state, State::Skipping(_))
    }

    pub fn parse(&mut self, buf: &[u8]) -> Result<(usize, Option<Parsed>), ProtocolError> {
        let mut consumed = 0;
        loop {
            let rest = buf.get(consumed..).unwrap_or_default();
            let step = match self.step(rest) {
                Ok(step) => step,
                Err(e) => {
                    // The caller closes the connection; leave a clean state anyway.
                    self.state = State::Idle { inline_scanned: 0 };
                    self.spans.clear();
                    return Err(e);
                }
            };
            match step {
                Step::More(n) => return Ok((consumed + n, None)),
                Step::Continue(n) => consumed += n,
                Step::Done(n, parsed) => return Ok((consumed + n, Some(parsed))),
            }
        }
    }

    /// Advances the state machine over `rest`, the bytes not yet consumed.
    fn step(&mut self, rest: &[u8]) -> Result<Step, ProtocolError> {
        match mem::replace(&mut self.state, State::Idle { inline_scanned: 0 }) {
            State::Idle { inline_scanned } => self.step_idle(rest, inline_scanned),
            State::Multibulk {
                argc,
                next,
                bulk_bytes,
            } => self.step_multibulk(rest, argc, next, bulk_bytes),
            State::Skipping(skip) => self.step_skip(rest, skip),
        }
    }

    /// At a command boundary: a `*` header starts a multibulk, anything else is
    /// an inline line.
    fn step_idle(&mut self, rest: &[u8], inline_scanned: usize) -> Result<Step, ProtocolError> {
        match rest.first() {
            None => Ok(Step::More(0)),
            Some(b'*') => {
                let Some((argc, first)) = number_line(rest, 0, "invalid multibulk length")? else {
                    return Ok(Step::More(0));
                };
                if argc <= 0 {
                    // Redis treats `*0` and `*-1` requests as nothing at all.
                    return Ok(Step::Continue(first));
                }
                let argc = usize::try_from(argc)
                    .ok()
                    .filter(|&n| n <= self.limits.max_args)
                    .ok_or(ProtocolError("invalid multibulk length"))?;
                self.spans.clear();
                self.state = State::Multibulk {
                    argc,
                    next: first,
                    bulk_bytes: 0,
                };
                Ok(Step::Continue(0))
            }
            Some(_) => self.step_inline(rest, inline_scanned),
        }
    }

    /// An inline command: one line, split like `redis-cli` input.
    fn step_inline(&mut self, rest: &[u8], scanned: usize) -> Result<Step, ProtocolError> {
        // A line is at most MAX_INLINE bytes before its '\n', so the '\n' must be
        // among the first MAX_INLINE + 1 bytes. Deciding by the line, not by how
        // much happens to be buffered, keeps the outcome independent of splits.
        let window = rest.len().min(MAX_INLINE + 1);
        let from = scanned.min(window);
        let Some(found) = rest[from..window].iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_INLINE {
                return Err(ProtocolError("too big inline request"));
            }
            self.state = State::Idle {
                inline_scanned: window,
            };
            return Ok(Step::More(0));
        };
        let newline = from + found;
        let line = &rest[..newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let args = split_inline(line)?;
        if args.is_empty() {
            Ok(Step::Continue(newline + 1))
        } else {
            Ok(Step::Done(newline + 1, Parsed::Command(args)))
        }
    }

    /// Checks the arguments of a multibulk one by one; builds the command once
    /// all are buffered, or switches to skipping at the first oversized one.
    fn step_multibulk(
        &mut self,
        rest: &[u8],
        argc: usize,
        mut next: usize,
        mut bulk_bytes: usize,
    ) -> Result<Step, ProtocolError> {
        let budget = self.limits.max_bulk.saturating_add(MAX_INLINE);
        while self.spans.len() < argc {
            let Some((len, start)) = bulk_header(rest, next)? else {
                self.state = State::Multibulk {
                    argc,
                    next,
                    bulk_bytes,
                };
                return Ok(Step::More(0));
            };
            if len > self.limits.max_bulk || bulk_bytes.saturating_add(len) > budget {
                let name = match self.spans.first() {
                    Some(&(s, e)) => rest.get(s..e).map(<[u8]>::to_vec),
                    None => None,
                };
                // The loop runs only while fewer than `argc` are done.
                let args_left = argc - self.spans.len() - 1;
                self.spans.clear();
                self.state = State::Skipping(Skip {
                    name,
                    len,
                    args_left,
                    phase: SkipPhase::Body(len),
                });
                // The arguments before this one and its header are complete;
                // consuming them starts the stream-past.
                return Ok(Step::Continue(start));
            }
            let end = start.saturating_add(len);
            match rest.get(end..end.saturating_add(2)) {
                None => {
                    self.state = State::Multibulk {
                        argc,
                        next,
                        bulk_bytes,
                    };
                    return Ok(Step::More(0));
                }
                Some(b"\r\n") => {}
                Some(_) => return Err(ProtocolError("expected CRLF after bulk data")),
            }
            self.spans.push((start, end));
            bulk_bytes += len;
            next = end + 2;
        }
        let args = self
            .spans
            .drain(..)
            .map(|(s, e)| rest.get(s..e).unwrap_or_default().to_vec())
            .collect();
        Ok(Step::Done(next, Parsed::Command(args)))
    }

    /// Consumes whatever part of a discarded command is buffered, validating its
    /// framing as strictly as a kept one.
    fn step_skip(&mut self, rest: &[u8], mut skip: Skip) -> Result<Step, ProtocolError> {
        let mut pos = 0;
        loop {
            match skip.phase {
                SkipPhase::Body(left) => {
                    let take = left.min(rest.len() - pos);
                    pos += take;
                    if take < left {
                        skip.phase = SkipPhase::Body(left - take);
                        self.state = State::Skipping(skip);
                        return Ok(Step::More(pos));
                    }
                    skip.phase = SkipPhase::Cr;
                }
                SkipPhase::Cr | SkipPhase::Lf => {
                    let (want, then) = match skip.phase {
                        SkipPhase::Cr => (b'\r', SkipPhase::Lf),
                        _ => (b'\n', SkipPhase::Header),
                    };
                    match rest.get(pos) {
                        None => {
                            self.state = State::Skipping(skip);
                            return Ok(Step::More(pos));
                        }
                        Some(&b) if b == want => pos += 1,
                        Some(_) => return Err(ProtocolError("expected CRLF after bulk data")),
                    }
                    skip.phase = then;
                    if matches!(then, SkipPhase::Header) {
                        if skip.args_left == 0 {
                            return Ok(Step::Done(
                                pos,
                                Parsed::TooLarge {
                                    name: skip.name,
                                    len: skip.len,
                                },
                            ));
                        }
                        skip.args_left -= 1;
                    }
                }
                SkipPhase::Header => {
                    let Some((len, start)) = bulk_header(rest, pos)? else {
                        self.state = State::Skipping(skip);
                        return Ok(Step::More(pos));
                    };
                    pos = start;
                    skip.phase = SkipPhase::Body(len);
                }
            }
        }
    }
}

/// Parses the `$<len>\r\n` header at `rest[at..]`: the length and the offset of
/// the data, or `None` if the header is not complete yet.
fn bulk_header(rest: &[u8], at: usize) -> Result<Option<(usize, usize)>, ProtocolError> {
    match rest.get(at) {
        None => return Ok(None),
        Some(b'$') => {}
        Some(_) => return Err(ProtocolError("expected '$'")),
    }
    let Some((len, start)) = number_line(rest, at, "invalid bulk length")? else {
        return Ok(None);
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&n| n <= MAX_BULK_LEN)
        .ok_or(ProtocolError("invalid bulk length"))?;
    Ok(Some((len, start)))
}

/// Parses the number after the type byte at `rest[at]` up to its `\r\n`: the
/// number and the offset after the line, or `None` if the line is not complete.
/// A byte that cannot be part of a number, or more bytes than any number has,
/// fails at once rather than after the line ends, so a header line can never
/// make the parser wait on (or rescan) a long run of bytes. The reply parser
/// (`reply`) reads its headers with it too.
pub(crate) fn number_line(
    rest: &[u8],
    at: usize,
    err: &'static str,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let digits = at + 1;
    let mut i = digits;
    loop {
        match rest.get(i) {
            None => return Ok(None),
            Some(b'\r') => break,
            Some(&b) if (b.is_ascii_digit() || b == b'-') && i - digits < MAX_NUMBER_LEN => i += 1,
            Some(_) => return Err(ProtocolError(err)),
        }
    }
    match rest.get(i + 1) {
        None => Ok(None),
        Some(b'\n') => parse_i64(&rest[digits..i])
            .map(|n| Some((n, i + 2)))
            .ok_or(ProtocolError(err)),
        Some(_) => Err(ProtocolError(err)),
    }
}

/// Parses a decimal integer the way Redis's `string2ll` does: an optional `-`,
/// then digits without leading zeros (`0` alone is fine, `-0` is not), no `+`,
/// no overflow.
fn parse_i64(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        // i64::MIN's magnitude is one more than i64::MAX.
        (value <= i64::MAX as u64 + 1).then(|| (value as i64).wrapping_neg())
    } else {
        i64::try_from(value).ok()
    }
}

/// The separators between inline arguments (C's `isspace`; `\n` never occurs
/// inside a line).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c)
}

/// The value of a hex digit, if `b` is one.
fn hex_value(b: Option<&u8>) -> Option<u8> {
    match *b? {
        d @ b'0'..=b'9' => Some(d - b'0'),
        d @ b'a'..=b'f' => Some(d - b'a' + 10),
        d @ b'A'..=b'F' => Some(d - b'A' + 10),
        _ => None,
    }
}

/// Splits an inline line into arguments like Redis's `sdssplitargs`: runs of
/// whitespace separate arguments; `"..."` quotes with `\"`, `\\`, `\n`, `\r`,
/// `\t`, `\b`, `\a` and `\xHH` escapes (any other `\c` is `c`); `'...'` quotes
/// with only `\'`. A quote may start mid-argument (`a"b c"` is `ab c`), but a
/// closing quote must end the argument. Unlike C, a NUL byte is an ordinary byte.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    const UNBALANCED: ProtocolError = ProtocolError("unbalanced quotes in inline request");
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while line.get(i).copied().is_some_and(is_space) {
            i += 1;
        }
        if i >= line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        let mut quote: Option<u8> = None;
        loop {
            let c = line.get(i).copied();
            match (quote, c) {
                (Some(_), None) => return Err(UNBALANCED),
                (Some(b'"'), Some(b'\\')) => {
                    if let (Some(b'x'), Some(hi), Some(lo)) = (
                        line.get(i + 1),
                        hex_value(line.get(i + 2)),
                        hex_value(line.get(i + 3)),
                    ) {
                        arg.push(hi << 4 | lo);
                        i += 4;
                    } else if let Some(&e) = line.get(i + 1) {
                        arg.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                        i += 2;
                    } else {
                        // A trailing backslash escapes nothing; the quote is unclosed.
                        return Err(UNBALANCED);
                    }
                }
                (Some(b'\''), Some(b'\\')) if line.get(i + 1) == Some(&b'\'') => {
                    arg.push(b'\'');
                    i += 2;
                }
                (Some(q), Some(b)) if b == q => {
                    if line.get(i + 1).is_some_and(|&n| !is_space(n)) {
                        return Err(UNBALANCED);
                    }
                    i += 1;
                    break;
                }
                (Some(_), Some(b)) => {
                    arg.push(b);
                    i += 1;
                }
                (None, None) => break,
                (None, Some(b)) if is_space(b) => break,
                (None, Some(q @ (b'"' | b'\''))) => {
                    quote = Some(q);
                    i += 1;
                }
                (None, Some(b)) => {
                    arg.push(b);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
}

/// Appends `n` in decimal.
fn write_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends a one-line reply, replacing any `\r` or `\n` with a space: a line
/// break inside would end the reply early and desynchronise the client.
fn write_line(out: &mut Vec<u8>, kind: u8, s: &str) {
    out.push(kind);
    out.extend(
        s.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// `+OK\r\n`. `s` should not contain `\r` or `\n`; any that it does become spaces.
pub fn write_simple(out: &mut Vec<u8>, s: &str) {
    write_line(out, b'+', s);
}

/// `-ERR ...\r\n`; the caller passes the text after `-`, starting with the error
/// code (`ERR ...`, `NOAUTH ...`). Any `\r` or `\n` in it becomes a space.
pub fn write_error(out: &mut Vec<u8>, s: &str) {
    write_line(out, b'-', s);
}

/// `:5\r\n`.
pub fn write_integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    if n < 0 {
        out.push(b'-');
    }
    write_decimal(out, n.unsigned_abs());
    out.extend_from_slice(b"\r\n");
}

/// `$3\r\nabc\r\n`.
pub fn write_bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'$');
    write_decimal(out, b.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// `*n\r\n`: the header of an array whose `n` elements follow.
pub fn write_array_len(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    write_decimal(out, n as u64);
    out.extend_from_slice(b"\r\n");
}

/// `$-1\r\n`, the RESP2 null bulk string.
pub fn write_null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// A request as a client sends it: an array of bulk strings
/// (`*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n`). For tests, benches and tools that talk
/// to the control port.
pub fn write_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    out.push(b'*');
    write_decimal(out, args.len() as u64);
    out.extend_from_slice(b"\r\n");
    for arg in args {
        write_bulk(out, arg.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_bulk: 1024,
        max_args: 16,
    };

    /// Drives a parser the way the dispatcher does: append each chunk, parse
    /// until it asks for more, drain what it consumed. Returns the requests and
    /// the protocol error that ended the stream, if any.
    fn drive(limits: Limits, chunks: &[&[u8]]) -> (Vec<Parsed>, Option<ProtocolError>) {
        let mut parser = Parser::new(limits);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match parser.parse(&buf) {
                    Ok((n, parsed)) => {
                        assert!(n <= buf.len(), "consumed {n} of {} bytes", buf.len());
                        buf.drain(..n);
                        match parsed {
                            Some(p) => out.push(p),
                            None => break,
                        }
                    }
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    fn whole(input: &[u8]) -> (Vec<Parsed>, Option<ProtocolError>) {
        drive(LIMITS, &[input])
    }

    fn bytewise(limits: Limits, input: &[u8]) -> (Vec<Parsed>, Option<ProtocolError>) {
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        drive(limits, &chunks)
    }

    fn cmd(args: &[&[u8]]) -> Parsed {
        Parsed::Command(args.iter().map(|a| a.to_vec()).collect())
    }

    fn error_of(input: &[u8]) -> &'static str {
        match whole(input).1 {
            Some(ProtocolError(msg)) => msg,
            None => panic!("no protocol error for {:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn parses_array_of_bulk_strings_from_the_resp_spec() {
        let input = b"*2\r\n$4\r\nLLEN\r\n$6\r\nmylist\r\n";
        let mut parser = Parser::new(LIMITS);
        assert_eq!(
            parser.parse(input),
            Ok((input.len(), Some(cmd(&[b"LLEN", b"mylist"]))))
        );
    }

    #[test]
    fn parses_inline_command_with_or_without_cr() {
        assert_eq!(whole(b"PING\r\n"), (vec![cmd(&[b"PING"])], None));
        assert_eq!(whole(b"PING\n"), (vec![cmd(&[b"PING"])], None));
        assert_eq!(
            whole(b"PUBLISH news hello\r\n"),
            (vec![cmd(&[b"PUBLISH", b"news", b"hello"])], None)
        );
    }

    #[test]
    fn parses_pipelined_inline_and_multibulk_commands_in_order() {
        let input = b"PING\r\n*3\r\n$7\r\nPUBLISH\r\n$4\r\nnews\r\n$2\r\nhi\r\nONLINE news\n*1\r\n$4\r\nQUIT\r\n";
        let mut parser = Parser::new(LIMITS);
        let mut rest: &[u8] = input;
        let mut got = Vec::new();
        while let Ok((n, Some(p))) = parser.parse(rest) {
            rest = &rest[n..];
            got.push(p);
        }
        assert!(rest.is_empty());
        assert_eq!(
            got,
            vec![
                cmd(&[b"PING"]),
                cmd(&[b"PUBLISH", b"news", b"hi"]),
                cmd(&[b"ONLINE", b"news"]),
                cmd(&[b"QUIT"]),
            ]
        );
    }

    #[test]
    fn never_consumes_a_partial_command() {
        let input = b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nnews\r\n$2\r\nhi\r\n";
        for end in 0..input.len() {
            let mut parser = Parser::new(LIMITS);
            assert_eq!(parser.parse(&input[..end]), Ok((0, None)), "prefix {end}");
        }
        let inline = b"PUBLISH news hi\r\n";
        for end in 0..inline.len() {
            let mut parser = Parser::new(LIMITS);
            assert_eq!(parser.parse(&inline[..end]), Ok((0, None)), "prefix {end}");
        }
    }

    #[test]
    fn resumes_a_command_checked_across_calls() {
        let input = b"*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n";
        assert_eq!(
            bytewise(LIMITS, input),
            (vec![cmd(&[b"ECHO", b"hello"])], None)
        );
    }

    #[test]
    fn skips_empty_and_null_multibulk_like_redis() {
        assert_eq!(
            whole(b"*0\r\n*-1\r\nPING\r\n"),
            (vec![cmd(&[b"PING"])], None)
        );
        let mut parser = Parser::new(LIMITS);
        assert_eq!(parser.parse(b"*0\r\n"), Ok((4, None)));
    }

    #[test]
    fn skips_empty_inline_lines() {
        assert_eq!(
            whole(b"\r\n\n  \t \r\nPING\r\n"),
            (vec![cmd(&[b"PING"])], None)
        );
    }

    #[test]
    fn rejects_multibulk_count_over_max_args() {
        assert_eq!(error_of(b"*17\r\n"), "invalid multibulk length");
        let (ok, err) = whole(b"*16\r\n");
        assert_eq!((ok, err), (vec![], None));
    }

    #[test]
    fn rejects_malformed_multibulk_count() {
        for bad in [
            &b"*abc\r\n"[..],
            b"*01\r\n",
            b"*-0\r\n",
            b"*+1\r\n",
            b"*\r\n",
            b"*1 \r\n",
            b"*1\rX",
            b"*99999999999999999999\r\n",
        ] {
            assert_eq!(
                error_of(bad),
                "invalid multibulk length",
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rejects_multibulk_header_without_crlf_within_64k() {
        let mut input = b"*".to_vec();
        input.extend_from_slice(&[b'1'; MAX_INLINE + 1]);
        assert_eq!(error_of(&input), "invalid multibulk length");
        // Rejected as soon as the line cannot be a number: no waiting, no rescans.
        let mut parser = Parser::new(LIMITS);
        assert!(parser.parse(&input[..MAX_NUMBER_LEN + 2]).is_err());
    }

    #[test]
    fn rejects_element_not_starting_with_dollar() {
        assert_eq!(error_of(b"*1\r\n:4\r\n"), "expected '$'");
        assert_eq!(error_of(b"*2\r\n$4\r\nPING\r\n+hi\r\n"), "expected '$'");
    }

    #[test]
    fn rejects_malformed_bulk_length() {
        for bad in [
            &b"*1\r\n$abc\r\n"[..],
            b"*1\r\n$01\r\n",
            b"*1\r\n$\r\n",
            b"*1\r\n$4\rX",
            b"*1\r\n$12345678901234567890123\r\n",
        ] {
            assert_eq!(
                error_of(bad),
                "invalid bulk length",
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rejects_negative_bulk_length() {
        assert_eq!(error_of(b"*1\r\n$-1\r\n"), "invalid bulk length");
    }

    #[test]
    fn rejects_bulk_length_over_512_mib_whatever_the_limits() {
        let limits = Limits {
            max_bulk: usize::MAX,
            max_args: 16,
        };
        let over = format!("*1\r\n${}\r\n", MAX_BULK_LEN + 1);
        assert_eq!(
            drive(limits, &[over.as_bytes()]).1,
            Some(ProtocolError("invalid bulk length"))
        );
        let at = format!("*1\r\n${MAX_BULK_LEN}\r\n");
        assert_eq!(drive(limits, &[at.as_bytes()]), (vec![], None));
    }

    #[test]
    fn rejects_missing_crlf_after_bulk_data() {
        assert_eq!(
            error_of(b"*1\r\n$4\r\nPINGXX"),
            "expected CRLF after bulk data"
        );
        assert_eq!(
            error_of(b"*1\r\n$4\r\nPING\rX"),
            "expected CRLF after bulk data"
        );
        assert_eq!(
            error_of(b"*1\r\n$4\r\nPING\n\r"),
            "expected CRLF after bulk data"
        );
    }

    #[test]
    fn huge_headers_allocate_nothing_up_front() {
        let limits = Limits {
            max_bulk: MAX_BULK_LEN,
            max_args: usize::MAX,
        };
        let mut parser = Parser::new(limits);
        assert_eq!(
            parser.parse(b"*1000000000\r\n$536870912\r\nab"),
            Ok((0, None))
        );
        assert_eq!(parser.spans.capacity(), 0);
    }

    #[test]
    fn accepts_inline_line_of_64k() {
        let mut input = vec![b'a'; MAX_INLINE];
        input.push(b'\n');
        let (got, err) = whole(&input);
        assert_eq!(err, None);
        assert_eq!(got, vec![Parsed::Command(vec![vec![b'a'; MAX_INLINE]])]);
    }

    #[test]
    fn rejects_inline_line_over_64k_without_newline() {
        let input = vec![b'a'; MAX_INLINE + 1];
        assert_eq!(error_of(&input), "too big inline request");
        // The same, arriving one byte at a time: the scan resumes, never restarts.
        assert_eq!(
            bytewise(LIMITS, &input).1,
            Some(ProtocolError("too big inline request"))
        );
        let mut with_newline = input.clone();
        with_newline.push(b'\n');
        assert_eq!(error_of(&with_newline), "too big inline request");
    }

    #[test]
    fn splits_inline_arguments_on_any_whitespace_run() {
        assert_eq!(
            whole(b"  SEND\t u1   hi \r\n"),
            (vec![cmd(&[b"SEND", b"u1", b"hi"])], None)
        );
    }

    #[test]
    fn unquotes_double_quoted_inline_arguments_with_escapes() {
        assert_eq!(
            whole(b"PUBLISH news \"hello world\" \"a\\\"b\\\\c\\n\\r\\t\\x41\\x7a\\q\"\r\n"),
            (
                vec![cmd(&[
                    b"PUBLISH",
                    b"news",
                    b"hello world",
                    b"a\"b\\c\n\r\tAzq"
                ])],
                None
            )
        );
        // `\x` without two hex digits is just `x`.
        assert_eq!(whole(b"\"\\xg1\"\n"), (vec![cmd(&[b"xg1"])], None));
    }

    #[test]
    fn unquotes_single_quoted_inline_arguments() {
        assert_eq!(
            whole(b"PUBLISH news 'it\\'s \"raw\" \\n'\r\n"),
            (vec![cmd(&[b"PUBLISH", b"news", b"it's \"raw\" \\n"])], None)
        );
    }

    #[test]
    fn quotes_may_start_mid_argument_and_be_empty() {
        assert_eq!(
            whole(b"a\"b c\" \"\" ''\n"),
            (vec![cmd(&[b"ab c", b"", b""])], None)
        );
    }

    #[test]
    fn rejects_unbalanced_quotes_in_inline_request() {
        for bad in [
            &b"PUBLISH news \"hello\r\n"[..],
            b"PUBLISH news 'hello\n",
            b"PUBLISH news \"a\"b\n",
            b"PUBLISH news 'a'b\n",
            b"PUBLISH news \"a\\\n",
        ] {
            assert_eq!(
                error_of(bad),
                "unbalanced quotes in inline request",
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn streams_an_oversized_bulk_past_across_many_calls() {
        let limits = Limits {
            max_bulk: 16,
            max_args: 16,
        };
        let mut input = Vec::new();
        write_command(&mut input, &[&b"PUBLISH"[..], b"news", &[b'x'; 1000]]);
        input.extend_from_slice(b"PING\r\n");
        let mut parser = Parser::new(limits);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for chunk in input.chunks(7) {
            buf.extend_from_slice(chunk);
            while let Ok((n, parsed)) = parser.parse(&buf) {
                buf.drain(..n);
                match parsed {
                    Some(p) => got.push(p),
                    None => break,
                }
            }
            // Never more than a header's worth is left waiting.
            assert!(buf.len() < 32, "{} bytes buffered", buf.len());
        }
        assert_eq!(
            got,
            vec![
                Parsed::TooLarge {
                    name: Some(b"PUBLISH".to_vec()),
                    len: 1000
                },
                cmd(&[b"PING"]),
            ]
        );
    }

    #[test]
    fn oversized_first_argument_has_no_name() {
        let limits = Limits {
            max_bulk: 4,
            max_args: 16,
        };
        assert_eq!(
            drive(limits, &[b"*2\r\n$5\r\nHELLO\r\n$2\r\nhi\r\n"]),
            (vec![Parsed::TooLarge { name: None, len: 5 }], None)
        );
    }

    #[test]
    fn oversized_command_is_skipped_to_its_end() {
        let limits = Limits {
            max_bulk: 4,
            max_args: 16,
        };
        let input = b"*4\r\n$3\r\nSET\r\n$6\r\nsix666\r\n$1\r\nx\r\n$9\r\nninenine9\r\n*1\r\n$4\r\nPING\r\n";
        let expected = (
            vec![
                Parsed::TooLarge {
                    name: Some(b"SET".to_vec()),
                    len: 6,
                },
                cmd(&[b"PING"]),
            ],
            None,
        );
        assert_eq!(drive(limits, &[input]), expected);
        assert_eq!(bytewise(limits, input), expected);
    }

    #[test]
    fn oversized_command_still_needs_valid_framing() {
        let limits = Limits {
            max_bulk: 4,
            max_args: 16,
        };
        assert_eq!(
            drive(limits, &[b"*1\r\n$6\r\nsix666XX"]).1,
            Some(ProtocolError("expected CRLF after bulk data"))
        );
        assert_eq!(
            drive(limits, &[b"*2\r\n$6\r\nsix666\r\n:1\r\n"]).1,
            Some(ProtocolError("expected '$'"))
        );
        assert_eq!(
            drive(limits, &[b"*2\r\n$6\r\nsix666\r\n$-1\r\n"]).1,
            Some(ProtocolError("invalid bulk length"))
        );
    }

    #[test]
    fn arguments_together_over_max_bulk_plus_64k_are_too_large() {
        let limits = Limits {
            max_bulk: 100_000,
            max_args: 16,
        };
        let mut input = Vec::new();
        write_command(&mut input, &[&b"X"[..], &[b'a'; 100_000], &[b'b'; 70_000]]);
        assert_eq!(
            drive(limits, &[&input]),
            (
                vec![Parsed::TooLarge {
                    name: Some(b"X".to_vec()),
                    len: 70_000
                }],
                None
            )
        );
        let mut fits = Vec::new();
        write_command(&mut fits, &[&b"X"[..], &[b'a'; 100_000], &[b'b'; 60_000]]);
        assert!(matches!(
            drive(limits, &[&fits]).0.as_slice(),
            [Parsed::Command(args)] if args.len() == 3
        ));
    }

    #[test]
    fn protocol_error_reply_names_the_problem() {
        assert_eq!(
            ProtocolError("expected '$'").message(),
            "ERR protocol error: expected '$'"
        );
    }

    #[test]
    fn encodes_simple_string() {
        let mut out = Vec::new();
        write_simple(&mut out, "OK");
        assert_eq!(out, b"+OK\r\n");
    }

    #[test]
    fn encodes_error() {
        let mut out = Vec::new();
        write_error(&mut out, "ERR unknown command 'foo'");
        assert_eq!(out, b"-ERR unknown command 'foo'\r\n");
    }

    #[test]
    fn line_replies_cannot_break_framing() {
        let mut out = Vec::new();
        write_simple(&mut out, "a\r\nb");
        write_error(&mut out, "ERR x\ny");
        assert_eq!(out, b"+a  b\r\n-ERR x y\r\n");
    }

    #[test]
    fn encodes_integers_including_extremes() {
        let mut out = Vec::new();
        for n in [0, 5, -5, i64::MAX, i64::MIN] {
            write_integer(&mut out, n);
        }
        assert_eq!(
            out,
            b":0\r\n:5\r\n:-5\r\n:9223372036854775807\r\n:-9223372036854775808\r\n"
        );
    }

    #[test]
    fn encodes_bulk_and_null() {
        let mut out = Vec::new();
        write_bulk(&mut out, b"abc");
        write_bulk(&mut out, b"");
        write_null(&mut out);
        assert_eq!(out, b"$3\r\nabc\r\n$0\r\n\r\n$-1\r\n");
    }

    #[test]
    fn encodes_command_as_array_of_bulk_strings() {
        let mut out = Vec::new();
        write_command(&mut out, &["LLEN", "mylist"]);
        assert_eq!(out, b"*2\r\n$4\r\nLLEN\r\n$6\r\nmylist\r\n");
    }

    #[test]
    fn parses_numbers_like_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b"-9223372036854775809"), None);
        for bad in [&b""[..], b"-", b"-0", b"007", b"1-", b"--1"] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// Bytes that look like RESP often enough to reach every state.
    fn resp_like() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            Just(b"*".to_vec()),
            Just(b"$".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"'".to_vec()),
            Just(b"\\".to_vec()),
            Just(b" ".to_vec()),
            Just(b"-1".to_vec()),
            (0u32..40).prop_map(|n| n.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..8),
        ];
        prop::collection::vec(token, 0..64).prop_map(|t| t.concat())
    }

    /// A stream of requests: multibulk (some arguments over the small
    /// `max_bulk`), inline lines, empty requests, and perhaps trailing garbage.
    fn request_stream() -> impl Strategy<Value = Vec<u8>> {
        let arg = prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 0..12),
            1 => prop::collection::vec(any::<u8>(), 20..60),
        ];
        let request = prop_oneof![
            prop::collection::vec(arg, 1..4).prop_map(|args| {
                let mut out = Vec::new();
                write_command(&mut out, &args);
                out
            }),
            "[a-zA-Z0-9 \"'\\\\]{0,20}\r?\n".prop_map(String::into_bytes),
            Just(b"*0\r\n".to_vec()),
            Just(b"*-1\r\n".to_vec()),
        ];
        (
            prop::collection::vec(request, 0..8),
            prop::option::of(resp_like()),
        )
            .prop_map(|(requests, tail)| {
                let mut out = requests.concat();
                out.extend(tail.unwrap_or_default());
                out
            })
    }

    const SMALL: Limits = Limits {
        max_bulk: 16,
        max_args: 8,
    };

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
        }

        #[test]
        fn encoded_commands_parse_back_to_their_arguments(
            args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..8),
        ) {
            let mut input = Vec::new();
            write_command(&mut input, &args);
            let mut parser = Parser::new(Limits { max_bulk: 64, max_args: 8 });
            prop_assert_eq!(parser.parse(&input), Ok((input.len(), Some(Parsed::Command(args)))));
        }

        #[test]
        fn any_split_gives_the_same_requests(
            input in request_stream(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let expected = drive(SMALL, &[&input]);
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            at.push(0);
            at.push(input.len());
            at.sort_unstable();
            let chunks: Vec<&[u8]> = at.windows(2).map(|w| &input[w[0]..w[1]]).collect();
            prop_assert_eq!(&drive(SMALL, &chunks), &expected);
            prop_assert_eq!(&bytewise(SMALL, &input), &expected);
        }
    }
}
