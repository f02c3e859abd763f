//! What a connection's complete data messages do: echoed back in `--echo` mode, else
//! the client protocol (`client_msg`: join, leave, ping), each request answered with
//! one JSON text frame. A refused request gets an error reply; the connection stays.

use super::client_msg::{self, ClientError, ClientRequest};
use super::outbox::Chunk;
use super::Reactor;
use crate::ws::frame::{encode_frame, OpCode};

impl Reactor {
    pub(super) fn on_message(&mut self, key: u32, text: bool, payload: &[u8]) {
        self.local.messages_received += 1;
        if self.shared.settings.echo {
            let op = if text { OpCode::Text } else { OpCode::Binary };
            self.queue(
                key,
                Chunk::Owned(encode_frame(op, payload).into_boxed_slice()),
            );
            return;
        }
        if !text {
            self.reply_text(key, &client_msg::error_reply(ClientError::Binary));
            return;
        }
        let reply = match client_msg::parse(payload) {
            Ok(ClientRequest::Ping) => client_msg::PONG_REPLY.to_string(),
            Ok(ClientRequest::Join(room)) => {
                let Some(conn) = self.conns.get(key as usize) else {
                    return;
                };
                let member = self
                    .rooms
                    .id(&room)
                    .is_some_and(|id| conn.room_index(id).is_some());
                if member || conn.rooms.len() < self.shared.settings.max_rooms {
                    if !member {
                        self.join_room(key, &room);
                    }
                    client_msg::room_reply("joined", &room)
                } else {
                    client_msg::error_reply(ClientError::TooManyRooms)
                }
            }
            Ok(ClientRequest::Leave(room)) => {
                self.leave_room(key, &room);
                client_msg::room_reply("left", &room)
            }
            Err(e) => client_msg::error_reply(e),
        };
        self.reply_text(key, &reply);
    }

    fn reply_text(&mut self, key: u32, text: &str) {
        self.queue(
            key,
            Chunk::Owned(encode_frame(OpCode::Text, text.as_bytes()).into_boxed_slice()),
        );
    }
}
