//! What wspush nodes put in the broker: the channel names and the one message format
//! every node publishes and decodes.
//!
//! A message is a small binary envelope — a version byte, a kind byte, the sending
//! node's 64-bit instance nonce and its 64-bit publish sequence number, then the
//! kind's body — so that a node can recognise (and skip) its own messages echoed
//! back, restore one sender's order across Redis instances within a read (see
//! `order_key`), and so that a later version can add kinds
//! without older nodes misreading them: an unknown version or kind decodes to an
//! error the caller counts and drops. The payload of a push is the rest of the
//! message, untouched, so it is never copied into a second encoding.
//!
//! Pure: bytes in, values out; never panics on what a broker (or anyone with access
//! to it) delivers.

use std::fmt;

/// The envelope version this code writes and reads.
pub const VERSION: u8 = 1;

/// Bytes before a message's body: version, kind, nonce, sequence number.
const HEADER: usize = 2 + 8 + 8;

/// The longest node id (like a room name).
pub const MAX_NODE_ID: usize = 128;

/// Which channel a name belongs to, under the cluster prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// `P:room:<room>`: PUBLISH to a room.
    Room,
    /// `P:user:<user>`: SEND, JOIN, LEAVE, KICK for a user.
    User,
    /// `P:cluster`: BROADCAST and node heartbeats.
    Cluster,
}

/// The names a cluster uses in its broker, all under one prefix.
#[derive(Debug, Clone)]
pub struct Names {
    room: Vec<u8>,
    user: Vec<u8>,
    cluster: Vec<u8>,
    presence: Vec<u8>,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            room: format!("{prefix}:room:").into_bytes(),
            user: format!("{prefix}:user:").into_bytes(),
            cluster: format!("{prefix}:cluster").into_bytes(),
            presence: format!("{prefix}:presence:").into_bytes(),
        }
    }

    /// The channel of a room or user; `name` is ignored for the cluster channel.
    pub fn channel(&self, kind: ChannelKind, name: &str) -> Vec<u8> {
        let head = match kind {
            ChannelKind::Room => &self.room,
            ChannelKind::User => &self.user,
            ChannelKind::Cluster => return self.cluster.clone(),
        };
        let mut c = Vec::with_capacity(head.len() + name.len());
        c.extend_from_slice(head);
        c.extend_from_slice(name.as_bytes());
        c
    }

    /// The cluster channel.
    pub fn cluster(&self) -> &[u8] {
        &self.cluster
    }

    /// The Redis key of a room's presence hash.
    pub fn presence_key(&self, room: &str) -> Vec<u8> {
        let mut k = self.presence.clone();
        k.extend_from_slice(room.as_bytes());
        k
    }

    /// The keys of a room's position hash and history stream (`P:pos:<room>`,
    /// `P:hist:<room>`) and its channel.
    pub fn room_keys(&self, room: &str) -> super::RoomKeys {
        let prefix = &self.cluster[..self.cluster.len() - b"cluster".len()];
        let key = |kind: &str| {
            let mut k = prefix.to_vec();
            k.extend_from_slice(kind.as_bytes());
            k.extend_from_slice(room.as_bytes());
            k
        };
        super::RoomKeys {
            pos: key("pos:"),
            stream: key("hist:"),
            channel: self.channel(ChannelKind::Room, room),
        }
    }

    /// What a channel name is, and the room or user it names; `None` for a channel
    /// that is not this cluster's or names nothing valid.
    pub fn parse_channel<'a>(&self, channel: &'a [u8]) -> Option<(ChannelKind, &'a str)> {
        if channel == self.cluster.as_slice() {
            return Some((ChannelKind::Cluster, ""));
        }
        let (kind, rest) = if let Some(rest) = channel.strip_prefix(self.room.as_slice()) {
            (ChannelKind::Room, rest)
        } else {
            (
                ChannelKind::User,
                channel.strip_prefix(self.user.as_slice())?,
            )
        };
        if !crate::names::is_valid_name(rest) {
            return None;
        }
        Some((kind, std::str::from_utf8(rest).ok()?))
    }
}

/// What a node's heartbeat tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub node_id: String,
    pub connections: u64,
    pub rooms: u64,
    pub users: u64,
    pub uptime_s: u64,
    /// How many Redis instances the sender places channels on: nodes that disagree
    /// look for each other's rooms in different places, which the receiver reports.
    pub instances: u16,
}

/// One decoded message. Bodies borrow from the received bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// A push: to the channel's room, its user, or (on the cluster channel) everyone.
    Push(&'a [u8]),
    /// A room push with the position Redis gave it (cluster mode with history): the
    /// body, written by the publish script, is `epoch:offset:payload`.
    Positioned {
        epoch: &'a str,
        offset: u64,
        payload: &'a [u8],
    },
    /// JOIN the channel's user to this room.
    Join(&'a str),
    /// LEAVE this room.
    Leave(&'a str),
    /// KICK the channel's user with this reason.
    Kick(&'a str),
    /// A node's periodic report (cluster channel).
    Heartbeat(Heartbeat),
    /// A node is stopping (cluster channel): forget it now.
    Leaving,
}

/// A message with who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The sending process's nonce (random per start), not its configured id: two
    /// nodes misconfigured with one id still deliver to each other.
    pub origin: u64,
    /// The sender's publish counter: its messages, on whatever channel, in the order
    /// its control port took them.
    pub seq: u64,
    pub message: Message<'a>,
}

/// Why received bytes are not a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    Truncated,
    /// Written by a newer (or foreign) version.
    UnknownVersion(u8),
    UnknownKind(u8),
    /// A room, reason or node id that is not valid text or too long.
    BadName,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => f.write_str("truncated message"),
            WireError::UnknownVersion(v) => write!(f, "unknown message version {v}"),
            WireError::UnknownKind(k) => write!(f, "unknown message kind {k:#04x}"),
            WireError::BadName => f.write_str("invalid name in message"),
        }
    }
}

const PUSH: u8 = b'P';
const JOIN: u8 = b'J';
const LEAVE: u8 = b'L';
const KICK: u8 = b'K';
const HEARTBEAT: u8 = b'H';
const LEAVING: u8 = b'X';
const POSITIONED: u8 = b'Q';

/// The header of a positioned push (message number `seq` of node `origin`): the
/// publish script appends `epoch:offset:payload`.
pub fn positioned_prefix(origin: u64, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER);
    out.push(VERSION);
    out.push(POSITIONED);
    out.extend_from_slice(&origin.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

/// The sender and sequence number of an encoded message, read without decoding it:
/// sorting one read's messages by this key puts each sender's messages back in the
/// order it published them, whichever Redis instance carried them. `None` for bytes
/// that are not a message.
pub fn order_key(bytes: &[u8]) -> Option<(u64, u64)> {
    if bytes.len() < HEADER || bytes[0] != VERSION {
        return None;
    }
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&bytes[2..10]);
    b.copy_from_slice(&bytes[10..HEADER]);
    Some((u64::from_be_bytes(a), u64::from_be_bytes(b)))
}

/// Encodes message number `seq` of node `origin`.
pub fn encode(origin: u64, seq: u64, message: &Message<'_>) -> Vec<u8> {
    let (kind, body_len) = match message {
        Message::Push(p) => (PUSH, p.len()),
        Message::Join(r) => (JOIN, r.len()),
        Message::Leave(r) => (LEAVE, r.len()),
        Message::Kick(r) => (KICK, r.len()),
        Message::Heartbeat(h) => (HEARTBEAT, 1 + h.node_id.len() + 4 * 8 + 2),
        Message::Leaving => (LEAVING, 0),
        Message::Positioned { epoch, payload, .. } => {
            (POSITIONED, epoch.len() + 22 + payload.len())
        }
    };
    let mut out = Vec::with_capacity(HEADER + body_len);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&origin.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    match message {
        Message::Push(p) => out.extend_from_slice(p),
        Message::Join(r) | Message::Leave(r) | Message::Kick(r) => {
            out.extend_from_slice(r.as_bytes())
        }
        Message::Heartbeat(h) => {
            let id = &h.node_id.as_bytes()[..h.node_id.len().min(MAX_NODE_ID)];
            out.push(id.len() as u8);
            out.extend_from_slice(id);
            for n in [h.connections, h.rooms, h.users, h.uptime_s] {
                out.extend_from_slice(&n.to_be_bytes());
            }
            out.extend_from_slice(&h.instances.to_be_bytes());
        }
        Message::Leaving => {}
        Message::Positioned {
            epoch,
            offset,
            payload,
        } => {
            out.extend_from_slice(epoch.as_bytes());
            out.push(b':');
            out.extend_from_slice(offset.to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(payload);
        }
    }
    out
}

/// Decodes a message received from the broker.
pub fn decode(bytes: &[u8]) -> Result<Envelope<'_>, WireError> {
    if bytes.len() < HEADER {
        return Err(WireError::Truncated);
    }
    if bytes[0] != VERSION {
        return Err(WireError::UnknownVersion(bytes[0]));
    }
    let (origin, seq) = order_key(bytes).ok_or(WireError::Truncated)?;
    let body = &bytes[HEADER..];
    let name = |b: &'_ [u8]| -> Result<(), WireError> {
        if crate::names::is_valid_name(b) {
            Ok(())
        } else {
            Err(WireError::BadName)
        }
    };
    let text = |b| std::str::from_utf8(b).map_err(|_| WireError::BadName);
    let message = match bytes[1] {
        PUSH => Message::Push(body),
        JOIN => {
            name(body)?;
            Message::Join(text(body)?)
        }
        LEAVE => {
            name(body)?;
            Message::Leave(text(body)?)
        }
        KICK => {
            if body.len() > crate::control::command::MAX_KICK_REASON {
                return Err(WireError::BadName);
            }
            Message::Kick(text(body)?)
        }
        HEARTBEAT => Message::Heartbeat(decode_heartbeat(body)?),
        LEAVING => Message::Leaving,
        POSITIONED => {
            let mut parts = body.splitn(3, |&b| b == b':');
            let (Some(epoch), Some(offset), Some(payload)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(WireError::Truncated);
            };
            let epoch = std::str::from_utf8(epoch).map_err(|_| WireError::BadName)?;
            if !crate::ws::handshake::is_valid_epoch(epoch) {
                return Err(WireError::BadName);
            }
            let offset = std::str::from_utf8(offset)
                .ok()
                .and_then(|o| o.parse::<u64>().ok())
                .ok_or(WireError::BadName)?;
            Message::Positioned {
                epoch,
                offset,
                payload,
            }
        }
        other => return Err(WireError::UnknownKind(other)),
    };
    Ok(Envelope {
        origin,
        seq,
        message,
    })
}

fn decode_heartbeat(body: &[u8]) -> Result<Heartbeat, WireError> {
    let (&len, rest) = body.split_first().ok_or(WireError::Truncated)?;
    let len = len as usize;
    if rest.len() < len + 4 * 8 + 2 {
        return Err(WireError::Truncated);
    }
    let (id, rest) = rest.split_at(len);
    if !crate::names::is_valid_name(id) {
        return Err(WireError::BadName);
    }
    let node_id = std::str::from_utf8(id)
        .map_err(|_| WireError::BadName)?
        .to_string();
    let mut n = [0u64; 4];
    for (i, v) in n.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&rest[i * 8..i * 8 + 8]);
        *v = u64::from_be_bytes(b);
    }
    let instances = u16::from_be_bytes([rest[32], rest[33]]);
    Ok(Heartbeat {
        node_id,
        connections: n[0],
        rooms: n[1],
        users: n[2],
        uptime_s: n[3],
        instances,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn channels_are_named_under_the_prefix_and_parse_back() {
        let n = Names::new("app1");
        assert_eq!(n.channel(ChannelKind::Room, "news"), b"app1:room:news");
        assert_eq!(n.channel(ChannelKind::User, "alice"), b"app1:user:alice");
        assert_eq!(n.channel(ChannelKind::Cluster, "ignored"), b"app1:cluster");
        assert_eq!(n.presence_key("news"), b"app1:presence:news");
        assert_eq!(
            n.parse_channel(b"app1:room:news"),
            Some((ChannelKind::Room, "news"))
        );
        assert_eq!(
            n.parse_channel(b"app1:user:a:b"),
            Some((ChannelKind::User, "a:b"))
        );
        assert_eq!(
            n.parse_channel(b"app1:cluster"),
            Some((ChannelKind::Cluster, ""))
        );
        assert_eq!(n.parse_channel(b"app2:room:news"), None);
        assert_eq!(n.parse_channel(b"app1:room:"), None);
        assert_eq!(n.parse_channel(b"app1:room:a b"), None);
    }

    #[test]
    fn every_kind_round_trips() {
        let hb = Heartbeat {
            node_id: "node-a".into(),
            connections: 10,
            rooms: 2,
            users: 7,
            uptime_s: 99,
            instances: 2,
        };
        for m in [
            Message::Push(b"\x00\xffpayload"),
            Message::Push(b""),
            Message::Join("news"),
            Message::Leave("news"),
            Message::Kick("bye"),
            Message::Kick(""),
            Message::Heartbeat(hb),
            Message::Leaving,
            Message::Positioned {
                epoch: "0123456789abcdef",
                offset: 42,
                payload: b"a:b:\xff",
            },
        ] {
            let bytes = encode(0xdead_beef_0123_4567, 42, &m);
            assert_eq!(order_key(&bytes), Some((0xdead_beef_0123_4567, 42)));
            assert_eq!(
                decode(&bytes),
                Ok(Envelope {
                    origin: 0xdead_beef_0123_4567,
                    seq: 42,
                    message: m
                })
            );
        }
    }

    #[test]
    fn a_push_body_is_the_payload_untouched() {
        let bytes = encode(1, 1, &Message::Push(b"hello"));
        assert_eq!(&bytes[..2], &[VERSION, b'P']);
        assert_eq!(&bytes[HEADER..], b"hello");
    }

    #[test]
    fn foreign_versions_kinds_and_bad_names_are_errors() {
        let mut m = encode(1, 1, &Message::Join("news"));
        m[0] = 2;
        assert_eq!(decode(&m), Err(WireError::UnknownVersion(2)));
        let mut m = encode(1, 1, &Message::Join("news"));
        m[1] = b'Z';
        assert_eq!(decode(&m), Err(WireError::UnknownKind(b'Z')));
        let mut m = encode(1, 1, &Message::Join("news"));
        m.push(b' ');
        assert_eq!(decode(&m), Err(WireError::BadName));
        assert_eq!(decode(&[VERSION, b'P']), Err(WireError::Truncated));
        let hb = encode(
            1,
            1,
            &Message::Heartbeat(Heartbeat {
                node_id: "n".into(),
                connections: 0,
                rooms: 0,
                users: 0,
                uptime_s: 0,
                instances: 1,
            }),
        );
        assert_eq!(decode(&hb[..hb.len() - 1]), Err(WireError::Truncated));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
            let _ = order_key(&bytes);
            let n = Names::new("p");
            let _ = n.parse_channel(&bytes);
        }

        #[test]
        fn arbitrary_payloads_round_trip(origin in any::<u64>(), seq in any::<u64>(), p in proptest::collection::vec(any::<u8>(), 0..512)) {
            let bytes = encode(origin, seq, &Message::Push(&p));
            prop_assert_eq!(decode(&bytes), Ok(Envelope { origin, seq, message: Message::Push(&p) }));
        }
    }
}
