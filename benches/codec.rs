//! Micro-benchmarks of the pure RFC 6455 code in `wspush::ws`: the per-byte and
//! per-frame costs a reactor pays. One group per topic. `cargo bench --bench codec
//! -- --test` runs each once as a smoke test; a full run must not share the machine
//! with load tests.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wspush::ws::frame::{decode_client_header, encode_frame, encode_header, OpCode};
use wspush::ws::handshake::{parse_request, HandshakeConfig, OriginPattern};
use wspush::ws::mask::{apply_mask, apply_mask_bytewise};
use wspush::ws::utf8::Utf8Validator;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn frame_header(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_header");
    let small = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d];
    let medium = [0x82, 0xfe, 0x01, 0x00, 0x37, 0xfa, 0x21, 0x3d];
    let large = [0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 0x37, 0xfa, 0x21, 0x3d];
    for (name, buf) in [("7bit", &small[..]), ("16bit", &medium), ("64bit", &large)] {
        g.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| decode_client_header(black_box(buf)))
        });
    }
    for len in [5usize, 256, 65536] {
        g.bench_function(BenchmarkId::new("encode", len), |b| {
            let mut out = [0u8; 10];
            b.iter(|| encode_header(true, OpCode::Binary, black_box(len), &mut out))
        });
    }
    g.finish();
}

fn mask(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask");
    for len in [16usize, 1024, 64 * 1024] {
        let mut buf = vec![0x5au8; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new("word", len), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), KEY, 1))
        });
        g.bench_function(BenchmarkId::new("bytewise", len), |b| {
            b.iter(|| apply_mask_bytewise(black_box(&mut buf), KEY, 1))
        });
    }
    g.finish();
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    let ascii = "push message payload, plain ASCII. "
        .repeat(2048)
        .into_bytes();
    let multibyte = "grüße, 你好, κόσμε, 🚀 ".repeat(2048).into_bytes();
    for (name, text) in [("ascii", &ascii), ("multibyte", &multibyte)] {
        assert!(std::str::from_utf8(text).is_ok());
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(BenchmarkId::new("whole", name), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                v.feed(black_box(text)).and_then(|()| v.finish())
            })
        });
        g.bench_function(BenchmarkId::new("1KiB_pieces", name), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                for piece in black_box(text).chunks(1024) {
                    v.feed(piece)?;
                }
                v.finish()
            })
        });
    }
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    let cfg = HandshakeConfig {
        path: "/ws".into(),
        allow_origins: vec![
            OriginPattern::parse("https://app.example.com").unwrap(),
            OriginPattern::parse("*.example.com").unwrap(),
        ],
        max_rooms: 16,
        forwarded_headers: false,
        assets: wspush::ws::handshake::no_assets,
    };
    let request = b"GET /ws?user=u-1234&rooms=news,sport,weather HTTP/1.1\r\n\
        Host: push.example.com\r\n\
        Connection: Upgrade\r\n\
        Pragma: no-cache\r\n\
        Cache-Control: no-cache\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n\
        Upgrade: websocket\r\n\
        Origin: https://app.example.com\r\n\
        Sec-WebSocket-Version: 13\r\n\
        Accept-Encoding: gzip, deflate, br, zstd\r\n\
        Accept-Language: en-US,en;q=0.9\r\n\
        Cookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
    // A benchmark of the error path would mislead: make sure this one upgrades.
    assert!(matches!(parse_request(request, &cfg), Ok(Some(_))));
    g.bench_function("parse_browser_request", |b| {
        b.iter(|| parse_request(black_box(request), &cfg))
    });
    g.finish();
}

fn push_frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_frame");
    for len in [100usize, 4096] {
        let payload = vec![b'x'; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new("text", len), |b| {
            b.iter(|| encode_frame(OpCode::Text, black_box(&payload)))
        });
    }
    g.finish();
}

/// permessage-deflate of the 1 KB JSON push of scripts/bench-compression.sh, at the
/// levels worth considering; each prints its compressed size once. Also the inflate
/// of a client message of that size.
fn deflate(c: &mut Criterion) {
    use wspush::ws::deflate::{Deflater, Inflater};
    let payload = include_bytes!("data/push-1k.json");
    let mut g = c.benchmark_group("deflate_push");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    for level in [1u32, 2, 3, 6, 9] {
        let mut d = Deflater::with_level(level);
        let size = d.frame(OpCode::Text, payload).map_or(0, |f| f.len());
        eprintln!(
            "deflate level {level}: {} -> {size} bytes ({:.3}x)",
            payload.len(),
            size as f64 / payload.len() as f64
        );
        g.bench_function(BenchmarkId::new("level", level), |b| {
            b.iter(|| d.frame(OpCode::Text, black_box(payload)))
        });
    }
    let frame = Deflater::new().frame(OpCode::Text, payload).unwrap();
    let body = &frame[if frame[1] == 126 { 4 } else { 2 }..];
    let mut i = Inflater::default();
    g.bench_function("inflate", |b| {
        b.iter(|| i.inflate(black_box(body), 1 << 16))
    });
    g.finish();
}

criterion_group!(
    benches,
    frame_header,
    mask,
    utf8,
    handshake,
    push_frame,
    deflate
);
criterion_main!(benches);
