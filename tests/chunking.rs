//! The reactor's frame reader must not care how the bytes are cut: a stream of frames
//! (fragmented text with multi-byte characters split across fragments, binary, pings
//! in between) delivered in arbitrary pieces, each read separately by the server,
//! echoes exactly as if it came in one piece. Payloads reach 70 KiB so frames carry
//! 7-bit, 16-bit (126..=65535) and 64-bit (> 65535) lengths, and the stream is cut
//! inside and at the edges of their headers.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use common::*;
use proptest::prelude::*;

/// Big enough for the largest message below (the default is 64 KiB).
const MAX_MESSAGE: &str = "128KiB";
const LARGEST: usize = 70 << 10;

/// A client frame and where its payload starts (its header length).
struct Frame {
    bytes: Vec<u8>,
    header: usize,
}

fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Frame {
    let bytes = client_frame(fin, opcode, payload);
    let header = bytes.len() - payload.len();
    Frame { bytes, header }
}

/// A message: opcode, payload, how many fragments to send it in.
type Message = (u8, Vec<u8>, usize);

/// An echoed message: opcode, payload.
type Echo = (u8, Vec<u8>);

/// Client frames for `messages`, each split into its fragments, a ping after the
/// first fragment of every message.
fn client_frames(messages: &[Message]) -> Vec<Frame> {
    let mut out = Vec::new();
    for (op, payload, parts) in messages {
        let n = (*parts).clamp(1, payload.len().max(1));
        let step = payload.len().div_ceil(n).max(1);
        let pieces: Vec<&[u8]> = if payload.is_empty() {
            vec![&payload[..]]
        } else {
            payload.chunks(step).collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            let opcode = if i == 0 { *op } else { 0 };
            out.push(frame(i + 1 == pieces.len(), opcode, piece));
            if i == 0 {
                out.push(frame(true, 9, b"p"));
            }
        }
    }
    out
}

/// Stream offsets to cut at: for frame `i`, every header offset `k` (0 = the frame's
/// first byte, `header` = its payload's first byte) whose bit is set in
/// `header_cuts[i]`, and one offset inside its payload from `payload_cuts[i]`.
fn cut_points(frames: &[Frame], header_cuts: &[u16], payload_cuts: &[u32]) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut at = 0;
    for (i, f) in frames.iter().enumerate() {
        let mask = header_cuts[i % header_cuts.len()];
        cuts.extend(
            (0..=f.header)
                .filter(|k| mask & (1 << k) != 0)
                .map(|k| at + k),
        );
        let payload = f.bytes.len() - f.header;
        if payload > 0 {
            let inside = payload_cuts[i % payload_cuts.len()] as usize % payload;
            cuts.push(at + f.header + inside);
        }
        at += f.bytes.len();
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Writes `bytes` as separate pieces split at `cuts`, pausing after each so the
/// server gets the chance to read it on its own.
fn send_in_pieces(s: &mut TcpStream, bytes: &[u8], cuts: &[usize]) {
    let mut at = 0;
    for &c in cuts.iter().chain(&[bytes.len()]) {
        let end = c.min(bytes.len());
        if end > at {
            s.write_all(&bytes[at..end]).expect("write piece");
            s.flush().expect("flush");
            thread::sleep(Duration::from_millis(1));
        }
        at = end;
    }
}

/// Reads on another thread (the echo of a large stream must not wait for the whole
/// stream to be sent) until `messages` data frames came back; pongs must carry "p".
fn spawn_echo_reader(
    s: &TcpStream,
    messages: usize,
) -> thread::JoinHandle<Result<Vec<Echo>, String>> {
    let mut s = s.try_clone().expect("clone socket");
    thread::spawn(move || {
        let mut got = Vec::new();
        while got.len() < messages {
            let (fin, op, payload) =
                read_server_frame(&mut s).map_err(|e| format!("after {got:?}: {e}"))?;
            if !fin {
                return Err("the server echoes whole messages".into());
            }
            match op {
                0xA if payload == b"p" => {}
                1 | 2 => got.push((op, payload)),
                other => return Err(format!("unexpected opcode {other}")),
            }
        }
        Ok(got)
    })
}

/// `len` bytes from `seed`: binary, or valid UTF-8 of one- to four-byte characters
/// (so fragment boundaries split characters).
fn payload(op: u8, len: usize, seed: u64) -> Vec<u8> {
    let mut g = Lcg(seed);
    if op == 2 {
        return (0..len).map(|_| g.below(256) as u8).collect();
    }
    let mut s = String::with_capacity(len + 4);
    while s.len() < len {
        let c = ['a', 'z', ' ', 'é', '€', '😀'][g.below(6)];
        if s.len() + c.len_utf8() > len {
            s.push('a');
        } else {
            s.push(c);
        }
    }
    s.into_bytes()
}

/// Lengths in each header class, weighted towards the class edges.
fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..126,
        Just(125usize),
        Just(126usize),
        126usize..=65535,
        Just(65535usize),
        Just(65536usize),
        65536usize..=LARGEST,
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        prop_oneof![Just(1u8), Just(2u8)],
        length(),
        any::<u64>(),
        prop_oneof![Just(1usize), 1usize..5],
    )
        .prop_map(|(op, len, seed, parts)| (op, payload(op, len, seed), parts))
}

fn echo_stream(frames: &[Frame], cuts: &[usize], messages: &[Message]) -> Vec<Echo> {
    let server = Server::start(&["--echo", "--threads", "1", "--max-message", MAX_MESSAGE]);
    let mut s = raw_upgrade(server.ws, "");
    s.set_nodelay(true).expect("nodelay");
    let reader = spawn_echo_reader(&s, messages.len());
    let bytes: Vec<u8> = frames
        .iter()
        .flat_map(|f| f.bytes.iter().copied())
        .collect();
    send_in_pieces(&mut s, &bytes, cuts);
    reader
        .join()
        .expect("reader thread")
        .unwrap_or_else(|e| panic!("echo: {e}"))
}

#[test]
fn every_header_boundary_of_every_length_class_is_cut() {
    let lengths = [0, 1, 125, 126, 127, 1000, 65535, 65536, LARGEST];
    let mut messages = Vec::new();
    let mut frames = Vec::new();
    let mut cuts = Vec::new();
    let mut at = 0;
    for (i, &len) in lengths.iter().enumerate() {
        let op = [1u8, 2][i % 2];
        let p = payload(op, len, i as u64);
        let header = frame(true, op, &p).header;
        // One copy of the frame per offset into its header, cut there.
        for k in 0..=header {
            let f = frame(true, op, &p);
            cuts.push(at + k);
            at += f.bytes.len();
            frames.push(f);
            messages.push((op, p.clone(), 1));
        }
    }
    let want: Vec<Echo> = messages.iter().map(|(o, p, _)| (*o, p.clone())).collect();
    assert_eq!(echo_stream(&frames, &cuts, &messages), want);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn echo_is_independent_of_how_the_stream_is_cut(
        messages in proptest::collection::vec(message(), 1..6),
        header_cuts in proptest::collection::vec(any::<u16>(), 1..32),
        payload_cuts in proptest::collection::vec(any::<u32>(), 1..32),
    ) {
        let frames = client_frames(&messages);
        let cuts = cut_points(&frames, &header_cuts, &payload_cuts);
        let got = echo_stream(&frames, &cuts, &messages);
        let want: Vec<Echo> =
            messages.iter().map(|(o, p, _)| (*o, p.clone())).collect();
        prop_assert_eq!(got, want);
    }
}
