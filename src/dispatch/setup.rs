//! The connection-setup commands mainstream Redis clients send at their defaults —
//! `HELLO` (redis-py 5+ sends `HELLO 3`), `AUTH username password`, `CLIENT
//! SETNAME/GETNAME/SETINFO/ID`, `SELECT 0`, `ECHO`, `COMMAND` probes — answered the way
//! Redis answers them, in RESP2 or, once a client chose it with `HELLO 3`, RESP3.
//!
//! RESP3 changes only what these commands use: `HELLO`'s reply is a map and a missing
//! name is `_`; every other reply (integers, simple strings, errors, bulk strings,
//! arrays) is written the same in both.

use log::warn;

use super::{constant_time_eq, Dispatcher, MAX_AUTH_FAILURES};
use crate::control::command::{command_count, AuthError, ClientCommand, CommandQuery};
use crate::control::resp;

impl Dispatcher {
    /// Checks `password` (`None`: a user other than `default`); on success the client
    /// is authenticated, else the failure is counted and answered (the third one
    /// closes the connection). Returns whether it succeeded.
    pub(super) fn authenticate(&mut self, key: usize, password: Option<&[u8]>) -> bool {
        let ok = match (&self.settings.password, password) {
            (Some(p), Some(given)) => constant_time_eq(p.as_bytes(), given),
            _ => false,
        };
        let c = &mut self.clients[key];
        if ok {
            c.authed = true;
            return true;
        }
        c.authed = false;
        c.auth_failures = c.auth_failures.saturating_add(1);
        self.stats.auth_failures += 1;
        resp::write_error(c.out(), AuthError::WrongPass.message());
        if c.auth_failures >= MAX_AUTH_FAILURES {
            warn!(
                "control: closing {} after {MAX_AUTH_FAILURES} failed AUTH attempts",
                c.peer
            );
            self.stats.auth_disconnects += 1;
            c.closing = true;
        }
        false
    }

    /// `HELLO [protover [AUTH username password] [SETNAME name]]`.
    pub(super) fn hello(
        &mut self,
        key: usize,
        proto: Option<i64>,
        auth: Option<Result<Vec<u8>, ()>>,
        setname: Option<Vec<u8>>,
    ) {
        if let Some(p) = proto {
            if p != 2 && p != 3 {
                let out = self.clients[key].out();
                resp::write_error(out, "NOPROTO unsupported protocol version");
                return;
            }
        }
        if let Some(auth) = auth {
            if self.settings.password.is_none() {
                let out = self.clients[key].out();
                resp::write_error(out, AuthError::NotConfigured.message());
                return;
            }
            if !self.authenticate(key, auth.as_deref().ok()) {
                return;
            }
        }
        let c = &mut self.clients[key];
        if !c.authed {
            resp::write_error(
                c.out(),
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
            return;
        }
        if let Some(name) = setname {
            if !valid_client_name(&name) {
                resp::write_error(
                    c.out(),
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
                return;
            }
            c.name = Some(name);
        }
        if let Some(p) = proto {
            c.resp3 = p == 3;
        }
        let (id, resp3) = (c.id, c.resp3);
        let out = c.out();
        let fields: [(&str, Field); 7] = [
            ("server", Field::Text("wspush")),
            ("version", Field::Text(env!("CARGO_PKG_VERSION"))),
            ("proto", Field::Int(if resp3 { 3 } else { 2 })),
            ("id", Field::Int(id as i64)),
            ("mode", Field::Text("standalone")),
            ("role", Field::Text("master")),
            ("modules", Field::EmptyList),
        ];
        if resp3 {
            out.extend_from_slice(format!("%{}\r\n", fields.len()).as_bytes());
        } else {
            resp::write_array_len(out, 2 * fields.len());
        }
        for (k, v) in fields {
            resp::write_bulk(out, k.as_bytes());
            match v {
                Field::Text(t) => resp::write_bulk(out, t.as_bytes()),
                Field::Int(n) => resp::write_integer(out, n),
                Field::EmptyList => resp::write_array_len(out, 0),
            }
        }
    }

    /// `CLIENT SETNAME | GETNAME | SETINFO | ID`.
    pub(super) fn client_command(&mut self, key: usize, cmd: ClientCommand) {
        let c = &mut self.clients[key];
        match cmd {
            ClientCommand::SetName(name) => {
                if valid_client_name(&name) {
                    // An empty name removes it, as in Redis.
                    c.name = (!name.is_empty()).then_some(name);
                    resp::write_simple(c.out(), "OK");
                } else {
                    resp::write_error(
                        c.out(),
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
            }
            ClientCommand::GetName => match c.name.clone() {
                Some(n) => resp::write_bulk(c.out(), &n),
                None if c.resp3 => c.out().extend_from_slice(b"_\r\n"),
                None => resp::write_null(c.out()),
            },
            ClientCommand::SetInfo => resp::write_simple(c.out(), "OK"),
            ClientCommand::Id => {
                let id = c.id as i64;
                resp::write_integer(c.out(), id);
            }
        }
    }

    /// `COMMAND`, `COMMAND DOCS`, `COMMAND INFO`, `COMMAND COUNT`.
    pub(super) fn command_info(&mut self, key: usize, q: CommandQuery) {
        let c = &mut self.clients[key];
        let resp3 = c.resp3;
        let out = c.out();
        match q {
            CommandQuery::Count => resp::write_integer(out, command_count() as i64),
            // DOCS is a map in RESP3; all are empty (no metadata is kept).
            CommandQuery::Docs if resp3 => out.extend_from_slice(b"%0\r\n"),
            CommandQuery::Docs | CommandQuery::Empty => resp::write_array_len(out, 0),
        }
    }
}

/// One value of the HELLO reply.
enum Field {
    Text(&'static str),
    Int(i64),
    EmptyList,
}

/// Redis's rule for client names: printable ASCII without spaces.
fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (0x21..=0x7e).contains(&b))
}
