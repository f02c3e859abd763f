//! The control port's command table: turns the arguments of one request into a
//! typed [`Command`], or into the `-ERR` reply that explains why not.
//!
//! Names are matched case-insensitively, arity is checked before anything else,
//! then room and user names ([`crate::names`]), then payload sizes — so the
//! dispatcher only ever sees commands it can execute. Pure code: it never
//! touches a connection, and it never echoes raw client bytes into an error
//! (an unknown command name is truncated and escaped first), since a stray
//! `\r\n` in a reply would desynchronise the client.

use std::fmt;

use crate::names::is_valid_name;

/// The longest kick reason: a Close frame's payload is at most 125 bytes, two of
/// which hold the close code.
pub const MAX_KICK_REASON: usize = 123;

/// How much of an unknown command name goes into the error (as Redis does).
const MAX_ECHOED_NAME: usize = 128;

/// One control command, ready to execute.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// `PING [message]`: `+PONG`, or the message as a bulk string (like Redis).
    Ping(Option<Vec<u8>>),
    /// `AUTH password`, or Redis 6's `AUTH username password`: there is only one
    /// password, so the username is ignored and this holds the last argument.
    Auth(Vec<u8>),
    /// `PUBLISH room payload`.
    Publish { room: String, payload: Vec<u8> },
    /// `BROADCAST payload`: every connection.
    Broadcast { payload: Vec<u8> },
    /// `SEND user payload`: every connection of that user.
    Send { user: String, payload: Vec<u8> },
    /// `JOIN user room`: puts every connection of the user in the room.
    Join { user: String, room: String },
    /// `LEAVE user room`.
    Leave { user: String, room: String },
    /// `KICK user [reason]`: closes the user's connections with code 4000 and
    /// this reason (`""` when none was given); valid UTF-8, at most
    /// [`MAX_KICK_REASON`] bytes, since it goes in a Close frame.
    Kick { user: String, reason: String },
    /// `ONLINE [room]`: connections, in total or in the room.
    Online { room: Option<String> },
    /// `INFO [section]`. The section is ASCII-lowercased (bytes that are not
    /// UTF-8 become U+FFFD, so the name simply matches nothing). The
    /// dispatcher answers with that section only — `server`, `clients`, `rooms`
    /// or `stats`; `all`, `everything` and `default` mean all of them, and an
    /// unknown section gets an empty bulk string, as in Redis.
    Info(Option<String>),
    /// `QUIT`: `+OK`, then close. Like Redis, any arguments are ignored.
    Quit,
}

/// Why a request is not a command; each maps to one `-ERR` reply, after which
/// the connection stays usable.
#[derive(Debug, PartialEq, Eq)]
pub enum CommandError {
    /// The name is not a command. Holds the name as it may be shown: at most
    /// 128 bytes, with anything outside printable ASCII (and `'`, `\`) escaped
    /// as `\xHH`.
    Unknown(String),
    /// Too many or too few arguments for the named (lowercase) command.
    WrongArity(&'static str),
    /// A room or user argument is not a valid name; holds `"room"` or `"user"`.
    InvalidName(&'static str),
    /// A kick reason that is not UTF-8 or is longer than [`MAX_KICK_REASON`] bytes.
    InvalidReason,
    /// A payload over `--max-message`.
    PayloadTooLarge,
}

impl CommandError {
    /// The reply text after the `-`.
    pub fn message(&self) -> String {
        match self {
            CommandError::Unknown(name) => format!("ERR unknown command '{name}'"),
            CommandError::WrongArity(cmd) => {
                format!("ERR wrong number of arguments for '{cmd}' command")
            }
            CommandError::InvalidName(what) => format!("ERR invalid {what} name"),
            CommandError::InvalidReason => {
                format!("ERR kick reason must be UTF-8 of at most {MAX_KICK_REASON} bytes")
            }
            CommandError::PayloadTooLarge => "ERR payload exceeds --max-message".to_owned(),
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for CommandError {}

/// The error to reply to a [`crate::control::resp::Parsed::TooLarge`] request:
/// one of its arguments was over `--max-message`, and that argument is, for
/// every command that takes a large one, the payload.
pub fn too_large_error() -> CommandError {
    CommandError::PayloadTooLarge
}

impl Command {
    /// Interprets one request's arguments (command name first). `max_payload` is
    /// the server's `--max-message`.
    pub fn parse(args: Vec<Vec<u8>>, max_payload: usize) -> Result<Command, CommandError> {
        let mut args = args.into_iter();
        let Some(name) = args.next() else {
            return Err(CommandError::Unknown(String::new()));
        };
        let Some(spec) = TABLE
            .iter()
            .find(|spec| name.eq_ignore_ascii_case(spec.name.as_bytes()))
        else {
            return Err(CommandError::Unknown(printable_name(&name)));
        };
        if spec.kind == Kind::Quit {
            return Ok(Command::Quit);
        }
        let given = args.len();
        if given < spec.min_args || given > spec.max_args {
            return Err(CommandError::WrongArity(spec.name));
        }
        // No command takes more than two arguments, and the arity check above
        // guarantees the required ones are present.
        let (a, b) = (args.next(), args.next());
        let payload = |p: Option<Vec<u8>>| {
            let p = p.unwrap_or_default();
            if p.len() > max_payload {
                Err(CommandError::PayloadTooLarge)
            } else {
                Ok(p)
            }
        };
        Ok(match spec.kind {
            Kind::Ping => Command::Ping(a),
            // `AUTH username password`: the password is the last argument.
            Kind::Auth => Command::Auth(b.or(a).unwrap_or_default()),
            Kind::Publish => Command::Publish {
                room: valid_name(a, "room")?,
                payload: payload(b)?,
            },
            Kind::Broadcast => Command::Broadcast {
                payload: payload(a)?,
            },
            Kind::Send => Command::Send {
                user: valid_name(a, "user")?,
                payload: payload(b)?,
            },
            Kind::Join => Command::Join {
                user: valid_name(a, "user")?,
                room: valid_name(b, "room")?,
            },
            Kind::Leave => Command::Leave {
                user: valid_name(a, "user")?,
                room: valid_name(b, "room")?,
            },
            Kind::Kick => Command::Kick {
                user: valid_name(a, "user")?,
                reason: String::from_utf8(b.unwrap_or_default())
                    .ok()
                    .filter(|r| r.len() <= MAX_KICK_REASON)
                    .ok_or(CommandError::InvalidReason)?,
            },
            Kind::Online => Command::Online {
                room: a.map(|room| valid_name(Some(room), "room")).transpose()?,
            },
            Kind::Info => {
                Command::Info(a.map(|s| String::from_utf8_lossy(&s).to_ascii_lowercase()))
            }
            Kind::Quit => Command::Quit,
        })
    }

    /// Commands allowed before AUTH when a password is set: AUTH and QUIT.
    /// Like Redis, PING is not: it answers `-NOAUTH` too.
    pub fn allowed_unauthenticated(&self) -> bool {
        matches!(self, Command::Auth(_) | Command::Quit)
    }
}

/// Which command a table row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ping,
    Auth,
    Publish,
    Broadcast,
    Send,
    Join,
    Leave,
    Kick,
    Online,
    Info,
    Quit,
}

/// A command's lowercase name and how many arguments it takes after the name.
struct Spec {
    name: &'static str,
    kind: Kind,
    min_args: usize,
    max_args: usize,
}

const fn spec(name: &'static str, kind: Kind, min_args: usize, max_args: usize) -> Spec {
    Spec {
        name,
        kind,
        min_args,
        max_args,
    }
}

/// The command table. QUIT's arity is never checked (Redis ignores its
/// arguments too); PUBLISH comes first because it is by far the most frequent.
const TABLE: [Spec; 11] = [
    spec("publish", Kind::Publish, 2, 2),
    spec("send", Kind::Send, 2, 2),
    spec("broadcast", Kind::Broadcast, 1, 1),
    spec("join", Kind::Join, 2, 2),
    spec("leave", Kind::Leave, 2, 2),
    spec("kick", Kind::Kick, 1, 2),
    spec("online", Kind::Online, 0, 1),
    spec("ping", Kind::Ping, 0, 1),
    spec("auth", Kind::Auth, 1, 2),
    spec("info", Kind::Info, 0, 1),
    spec("quit", Kind::Quit, 0, usize::MAX),
];

/// A room or user name, checked by the one rule in [`crate::names`].
fn valid_name(name: Option<Vec<u8>>, what: &'static str) -> Result<String, CommandError> {
    let name = name.unwrap_or_default();
    if !is_valid_name(&name) {
        return Err(CommandError::InvalidName(what));
    }
    String::from_utf8(name).map_err(|_| CommandError::InvalidName(what))
}

/// An unknown command name made safe to put in a reply: truncated to 128
/// bytes, with control characters, non-ASCII, `'` and `\` escaped as `\xHH`.
fn printable_name(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len().min(MAX_ECHOED_NAME));
    for &b in name.iter().take(MAX_ECHOED_NAME) {
        if (0x20..0x7f).contains(&b) && b != b'\'' && b != b'\\' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}
