//! --batch-delay: pushes are held for the delay to travel in bigger batches, the reply
//! waits with them (it still means "queued"), and all are delivered in
//! acknowledgement order.
//!
//! Only lower bounds on time are asserted: a held push cannot arrive early whatever
//! the machine's load, and since every batch is held at least the delay, a run of
//! `elapsed` can contain at most `elapsed / delay` flushes.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_push_and_its_reply_are_held_for_the_batch_delay() {
    let delay = Duration::from_millis(200);
    let server = Server::start(&["--batch-delay", "200ms", "--threads", "1"]);
    let mut sub = ws_connect(&server.url("?user=u&rooms=feed"));
    let mut ctl = server.control();
    assert_eq!(ctl.cmd(&["PING"]), Reply::Simple("PONG".into()));
    let sent = Instant::now();
    ctl.send(&["PUBLISH", "feed", "held"]);
    assert_eq!(ctl.read(), Reply::Int(1));
    let replied = sent.elapsed();
    assert_eq!(next_text(&mut sub), "held");
    let delivered = sent.elapsed();
    assert!(
        replied >= delay * 4 / 5,
        "the reply came after {replied:?}, before the {delay:?} batch delay"
    );
    assert!(
        delivered >= delay * 4 / 5,
        "the push arrived after {delivered:?}, before the {delay:?} batch delay"
    );
}

#[test]
fn batch_delay_groups_pushes_sent_over_time_and_delivers_them_in_order() {
    const PUSHES: usize = 200;
    const REACTORS: u32 = 2;
    let delay = Duration::from_millis(20);
    let server = Server::start(&["--batch-delay", "20ms", "--threads", "2"]);
    let mut subs: Vec<Ws> = (0..8)
        .map(|i| ws_connect(&server.url(&format!("?user=u{i}&rooms=feed"))))
        .collect();
    let mut ctl = server.control();
    let batches_before = server.info_u64("reactor_batches");
    let started = Instant::now();
    // One PUBLISH at a time, spread out, so that without the delay each would travel
    // to the reactors in a batch of its own.
    for i in 0..PUSHES {
        ctl.send(&["PUBLISH", "feed", &format!("m{i}")]);
        thread::sleep(Duration::from_millis(2));
    }
    for _ in 0..PUSHES {
        assert_eq!(ctl.read(), Reply::Int(8));
    }
    let elapsed = started.elapsed();
    let batches = server.info_u64("reactor_batches") - batches_before;
    for ws in &mut subs {
        for i in 0..PUSHES {
            assert_eq!(next_text(ws), format!("m{i}"));
        }
    }
    // Each flush sends at most one batch per reactor and was held at least `delay`.
    let most = u64::from(REACTORS) * (elapsed.as_nanos() / delay.as_nanos()) as u64;
    assert!(
        batches <= most,
        "{batches} reactor batches for {PUSHES} pushes in {elapsed:?}: at most {most} \
         if each is held {delay:?}"
    );
}
