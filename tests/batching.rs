//! --batch-delay: pushes held to travel in bigger batches are still all delivered, in
//! acknowledgement order, and the reply still means "queued".

mod common;

use common::*;

#[test]
fn batch_delay_delivers_every_push_in_order() {
    let server = Server::start(&["--batch-delay", "20ms", "--threads", "2"]);
    let mut subs: Vec<Ws> = (0..8)
        .map(|i| ws_connect(&server.url(&format!("?user=u{i}&rooms=feed"))))
        .collect();
    let mut ctl = server.control();
    for i in 0..200 {
        ctl.send(&["PUBLISH", "feed", &format!("m{i}")]);
    }
    for _ in 0..200 {
        assert_eq!(ctl.read(), Reply::Int(8));
    }
    for ws in &mut subs {
        for i in 0..200 {
            assert_eq!(next_text(ws), format!("m{i}"));
        }
    }
    assert!(
        server.info_u64("reactor_batches") < 400,
        "batches were not grouped"
    );
}
