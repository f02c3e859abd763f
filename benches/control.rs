//! Control-port parsing throughput: a pipelined buffer of 1000
//! `PUBLISH room <100 B>` requests, as a busy backend sends them, through the
//! RESP parser alone and through the parser plus the command table.
//! It measures pure code only; it never opens a socket.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use wspush::control::command::Command;
use wspush::control::resp::{write_command, Limits, Parsed, Parser};

const COMMANDS: usize = 1000;
const PAYLOAD: usize = 100;
const LIMITS: Limits = Limits {
    max_bulk: 64 * 1024,
    max_args: 1024,
};

/// 1000 pipelined `PUBLISH room-N <100 B>` requests in RESP array form.
fn pipelined_publishes() -> Vec<u8> {
    let payload = vec![b'p'; PAYLOAD];
    let mut buf = Vec::new();
    for i in 0..COMMANDS {
        let room = format!("room-{}", i % 16);
        write_command(&mut buf, &[&b"PUBLISH"[..], room.as_bytes(), &payload]);
    }
    buf
}

/// Parses every request in `buf`, handing each to `each`; returns how many.
fn parse_all(buf: &[u8], mut each: impl FnMut(Vec<Vec<u8>>)) -> usize {
    let mut parser = Parser::new(LIMITS);
    let mut rest = buf;
    let mut count = 0;
    while let Ok((n, Some(parsed))) = parser.parse(rest) {
        rest = &rest[n..];
        if let Parsed::Command(args) = parsed {
            each(args);
            count += 1;
        }
    }
    count
}

fn bench_control(c: &mut Criterion) {
    let buf = pipelined_publishes();
    assert_eq!(parse_all(&buf, drop), COMMANDS);

    let mut group = c.benchmark_group("control");
    group.throughput(Throughput::Bytes(buf.len() as u64));
    group.bench_function("resp_parse_1000_publish", |b| {
        b.iter(|| parse_all(black_box(&buf), |args| drop(black_box(args))))
    });
    group.bench_function("resp_and_command_1000_publish", |b| {
        b.iter(|| {
            parse_all(black_box(&buf), |args| {
                drop(black_box(Command::parse(args, LIMITS.max_bulk)))
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench_control);
criterion_main!(benches);
