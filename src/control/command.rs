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
    /// `NODES`: the cluster's live nodes with their counts (just this one when
    /// standalone).
    Nodes,
    /// `HISTORY room [count]`: the room's position and retained messages.
    /// `before`: only messages whose offset is below it (paging back past the reply
    /// size bound).
    History {
        room: String,
        count: Option<usize>,
        before: Option<u64>,
    },
    /// `INFO [section]`. The section is ASCII-lowercased (bytes that are not
    /// UTF-8 become U+FFFD, so the name simply matches nothing). The
    /// dispatcher answers with that section only — `server`, `clients`, `rooms`
    /// or `stats`; `all`, `everything` and `default` mean all of them, and an
    /// unknown section gets an empty bulk string, as in Redis.
    Info(Option<String>),
    /// `QUIT`: `+OK`, then close. Like Redis, any arguments are ignored.
    Quit,
    /// `UPGRADE`: start the new binary and hand every connection over to it
    /// (`+OK` from the new process, or `-ERR` from this one if it failed).
    Upgrade,
    /// `AUTH username password` with a user other than `default`: there is one
    /// user, so this is a wrong password.
    AuthUnknownUser,
    /// `HELLO [protover [AUTH username password] [SETNAME name]]`: what Redis
    /// clients send first (redis-py at its defaults). `proto` is the asked version as
    /// given; `auth` is `Err(())` for a user other than `default`.
    Hello {
        proto: Option<i64>,
        auth: Option<Result<Vec<u8>, ()>>,
        setname: Option<Vec<u8>>,
    },
    /// `CLIENT SETNAME name | GETNAME | SETINFO attr value | ID`.
    Client(ClientCommand),
    /// `SELECT db`: only 0 exists.
    Select(Vec<u8>),
    /// `ECHO message`.
    Echo(Vec<u8>),
    /// `COMMAND [COUNT | DOCS … | INFO …]`, for clients that probe: no command
    /// metadata is kept, so DOCS and INFO are empty.
    CommandInfo(CommandQuery),
}

/// The `CLIENT` subcommands a Redis client library sends.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientCommand {
    SetName(Vec<u8>),
    GetName,
    /// `SETINFO LIB-NAME|LIB-VER value`: accepted and ignored.
    SetInfo,
    Id,
}

/// What a `COMMAND` probe asks.
#[derive(Debug, PartialEq, Eq)]
pub enum CommandQuery {
    /// `COMMAND`, `COMMAND INFO`: an empty list.
    Empty,
    /// `COMMAND DOCS`: an empty map (an empty list in RESP2).
    Docs,
    /// `COMMAND COUNT`.
    Count,
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
    /// A count that is not a non-negative integer.
    InvalidCount,
    /// HISTORY's `before` is not a non-negative integer.
    InvalidOffset,
    /// A syntax error in a multi-argument command (HELLO, CLIENT, COMMAND).
    Syntax(&'static str),
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
            CommandError::InvalidCount => "ERR count is not a non-negative integer".to_owned(),
            CommandError::InvalidOffset => {
                "ERR before is not a non-negative integer offset".to_owned()
            }
            CommandError::Syntax(why) => format!("ERR {why}"),
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
        let rest: Vec<Vec<u8>> = if is_probe(&name) {
            args.by_ref().collect()
        } else {
            Vec::new()
        };
        if is_probe(&name) {
            return parse_probe(&name, rest);
        }
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
        // Only HISTORY takes a third argument, and the arity check above guarantees
        // the required ones are present.
        let (a, b, c) = (args.next(), args.next(), args.next());
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
            // `AUTH username password`: there is one user, `default`.
            Kind::Auth => match (a, b) {
                (Some(user), Some(_)) if user != b"default" => Command::AuthUnknownUser,
                (a, b) => Command::Auth(b.or(a).unwrap_or_default()),
            },
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
            Kind::Nodes => Command::Nodes,
            Kind::History => Command::History {
                room: valid_name(a, "room")?,
                count: b
                    .map(|b| non_negative(&b).ok_or(CommandError::InvalidCount))
                    .transpose()?,
                before: c
                    .map(|c| non_negative(&c).ok_or(CommandError::InvalidOffset))
                    .transpose()?,
            },
            Kind::Info => {
                Command::Info(a.map(|s| String::from_utf8_lossy(&s).to_ascii_lowercase()))
            }
            Kind::Quit => Command::Quit,
            Kind::Upgrade => Command::Upgrade,
        })
    }
}

/// Whether a request named `name` may run before AUTH when a password is set: AUTH
/// and QUIT (like Redis, not even PING). Decided on the name alone, before arity,
/// names or sizes are checked, so that every other request answers
/// [`AuthError::NoAuth`] and an unauthenticated client learns nothing else.
pub fn allowed_before_auth(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"auth")
        || name.eq_ignore_ascii_case(b"quit")
        || name.eq_ignore_ascii_case(b"hello")
}

/// The connection-setup commands Redis client libraries send (parsed apart: they take
/// any number of arguments).
fn is_probe(name: &[u8]) -> bool {
    [&b"hello"[..], b"client", b"select", b"echo", b"command"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
}

fn parse_probe(name: &[u8], args: Vec<Vec<u8>>) -> Result<Command, CommandError> {
    let is = |a: &[u8], b: &str| a.eq_ignore_ascii_case(b.as_bytes());
    if is(name, "hello") {
        let mut it = args.into_iter();
        let proto = match it.next() {
            None => None,
            Some(v) => Some(
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|v| v.parse::<i64>().ok())
                    .ok_or(CommandError::Syntax(
                        "Protocol version is not an integer or out of range",
                    ))?,
            ),
        };
        let (mut auth, mut setname) = (None, None);
        while let Some(opt) = it.next() {
            if is(&opt, "auth") {
                let (Some(user), Some(pass)) = (it.next(), it.next()) else {
                    return Err(CommandError::Syntax("syntax error in HELLO option 'auth'"));
                };
                auth = Some(if user == b"default" {
                    Ok(pass)
                } else {
                    Err(())
                });
            } else if is(&opt, "setname") {
                setname = Some(it.next().ok_or(CommandError::Syntax(
                    "syntax error in HELLO option 'setname'",
                ))?);
            } else {
                return Err(CommandError::Syntax("syntax error in HELLO option"));
            }
        }
        return Ok(Command::Hello {
            proto,
            auth,
            setname,
        });
    }
    if is(name, "client") {
        let mut it = args.into_iter();
        let sub = it.next().ok_or(CommandError::WrongArity("client"))?;
        let rest: Vec<Vec<u8>> = it.collect();
        let c = if is(&sub, "setname") && rest.len() == 1 {
            ClientCommand::SetName(rest.into_iter().next().unwrap_or_default())
        } else if is(&sub, "getname") && rest.is_empty() {
            ClientCommand::GetName
        } else if is(&sub, "setinfo") && rest.len() == 2 {
            ClientCommand::SetInfo
        } else if is(&sub, "id") && rest.is_empty() {
            ClientCommand::Id
        } else {
            return Err(CommandError::Syntax(
                "unsupported CLIENT subcommand (wspush knows SETNAME, GETNAME, SETINFO, ID)",
            ));
        };
        return Ok(Command::Client(c));
    }
    if is(name, "select") || is(name, "echo") {
        let [arg]: [Vec<u8>; 1] = args.try_into().map_err(|_| {
            CommandError::WrongArity(if is(name, "select") { "select" } else { "echo" })
        })?;
        return Ok(if is(name, "select") {
            Command::Select(arg)
        } else {
            Command::Echo(arg)
        });
    }
    // COMMAND
    match args.first() {
        None => Ok(Command::CommandInfo(CommandQuery::Empty)),
        Some(sub) if is(sub, "docs") => Ok(Command::CommandInfo(CommandQuery::Docs)),
        Some(sub) if is(sub, "info") => Ok(Command::CommandInfo(CommandQuery::Empty)),
        Some(sub) if is(sub, "count") && args.len() == 1 => {
            Ok(Command::CommandInfo(CommandQuery::Count))
        }
        Some(_) => Err(CommandError::Syntax(
            "unsupported COMMAND subcommand (wspush knows COUNT, DOCS, INFO)",
        )),
    }
}

/// How many commands the table has (`COMMAND COUNT`).
pub fn command_count() -> usize {
    TABLE.len() + 5
}

/// Why a client is refused for authentication; each maps to one reply, after which
/// the connection stays usable (the dispatcher closes it after repeated
/// [`AuthError::WrongPass`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// A password is set and the client has not given it.
    NoAuth,
    /// AUTH with the wrong password.
    WrongPass,
    /// AUTH while no password is configured.
    NotConfigured,
}

impl AuthError {
    /// The reply text after the `-`, worded as Redis words it where Redis has one.
    pub fn message(&self) -> &'static str {
        match self {
            AuthError::NoAuth => "NOAUTH Authentication required.",
            AuthError::WrongPass => {
                "WRONGPASS invalid username-password pair or user is disabled."
            }
            AuthError::NotConfigured => {
                "ERR AUTH called without any password configured (start wspush with --control-password)"
            }
        }
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
    Nodes,
    History,
    Info,
    Quit,
    Upgrade,
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
const TABLE: [Spec; 14] = [
    spec("publish", Kind::Publish, 2, 2),
    spec("send", Kind::Send, 2, 2),
    spec("broadcast", Kind::Broadcast, 1, 1),
    spec("join", Kind::Join, 2, 2),
    spec("leave", Kind::Leave, 2, 2),
    spec("kick", Kind::Kick, 1, 2),
    spec("online", Kind::Online, 0, 1),
    spec("nodes", Kind::Nodes, 0, 0),
    spec("history", Kind::History, 1, 3),
    spec("ping", Kind::Ping, 0, 1),
    spec("auth", Kind::Auth, 1, 2),
    spec("info", Kind::Info, 0, 1),
    spec("quit", Kind::Quit, 0, usize::MAX),
    spec("upgrade", Kind::Upgrade, 0, 0),
];

/// A non-negative decimal integer argument (a count or an offset).
fn non_negative<T: std::str::FromStr>(arg: &[u8]) -> Option<T> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 16;

    fn parse(args: &[&[u8]]) -> Result<Command, CommandError> {
        Command::parse(args.iter().map(|a| a.to_vec()).collect(), MAX)
    }

    #[test]
    fn matches_command_names_case_insensitively() {
        for name in [&b"publish"[..], b"PUBLISH", b"PuBlIsH"] {
            assert_eq!(
                parse(&[name, b"news", b"hi"]),
                Ok(Command::Publish {
                    room: "news".into(),
                    payload: b"hi".to_vec()
                })
            );
        }
    }

    #[test]
    fn ping_takes_an_optional_message() {
        assert_eq!(parse(&[b"PING"]), Ok(Command::Ping(None)));
        assert_eq!(
            parse(&[b"ping", b"hi"]),
            Ok(Command::Ping(Some(b"hi".to_vec())))
        );
        assert_eq!(parse(&[b"ping", b""]), Ok(Command::Ping(Some(Vec::new()))));
    }

    #[test]
    fn auth_uses_its_last_argument_as_the_password() {
        assert_eq!(
            parse(&[b"AUTH", b"s3cret"]),
            Ok(Command::Auth(b"s3cret".to_vec()))
        );
        assert_eq!(
            parse(&[b"AUTH", b"default", b"s3cret"]),
            Ok(Command::Auth(b"s3cret".to_vec()))
        );
    }

    #[test]
    fn parses_push_commands() {
        assert_eq!(
            parse(&[b"BROADCAST", b"\xff\x00"]),
            Ok(Command::Broadcast {
                payload: b"\xff\x00".to_vec()
            })
        );
        assert_eq!(
            parse(&[b"SEND", b"u42", b""]),
            Ok(Command::Send {
                user: "u42".into(),
                payload: Vec::new()
            })
        );
    }

    #[test]
    fn parses_membership_commands() {
        assert_eq!(
            parse(&[b"JOIN", b"u1", b"news"]),
            Ok(Command::Join {
                user: "u1".into(),
                room: "news".into()
            })
        );
        assert_eq!(
            parse(&[b"LEAVE", b"u1", b"news"]),
            Ok(Command::Leave {
                user: "u1".into(),
                room: "news".into()
            })
        );
    }

    #[test]
    fn kick_reason_is_optional_and_defaults_to_empty() {
        assert_eq!(
            parse(&[b"KICK", b"u1"]),
            Ok(Command::Kick {
                user: "u1".into(),
                reason: String::new()
            })
        );
        assert_eq!(
            parse(&[b"KICK", b"u1", "bye \u{1f44b}".as_bytes()]),
            Ok(Command::Kick {
                user: "u1".into(),
                reason: "bye \u{1f44b}".into()
            })
        );
    }

    #[test]
    fn kick_reason_may_be_exactly_123_bytes() {
        let reason = "r".repeat(MAX_KICK_REASON);
        assert_eq!(
            parse(&[b"KICK", b"u1", reason.as_bytes()]),
            Ok(Command::Kick {
                user: "u1".into(),
                reason
            })
        );
    }

    #[test]
    fn rejects_kick_reason_over_123_bytes_or_not_utf8() {
        let long = "r".repeat(MAX_KICK_REASON + 1);
        assert_eq!(
            parse(&[b"KICK", b"u1", long.as_bytes()]),
            Err(CommandError::InvalidReason)
        );
        assert_eq!(
            parse(&[b"KICK", b"u1", b"\xc3\x28"]),
            Err(CommandError::InvalidReason)
        );
    }

    #[test]
    fn online_takes_an_optional_room() {
        assert_eq!(parse(&[b"ONLINE"]), Ok(Command::Online { room: None }));
        assert_eq!(parse(&[b"nodes"]), Ok(Command::Nodes));
        assert_eq!(
            parse(&[b"HISTORY", b"news"]),
            Ok(Command::History {
                room: "news".into(),
                count: None,
                before: None,
            })
        );
        assert_eq!(
            parse(&[b"history", b"news", b"5"]),
            Ok(Command::History {
                room: "news".into(),
                count: Some(5),
                before: None,
            })
        );
        assert_eq!(
            parse(&[b"history", b"news", b"5", b"1200"]),
            Ok(Command::History {
                room: "news".into(),
                count: Some(5),
                before: Some(1200),
            })
        );
        assert_eq!(
            parse(&[b"HISTORY", b"news", b"-1"]),
            Err(CommandError::InvalidCount)
        );
        assert_eq!(
            parse(&[b"HISTORY", b"news", b"5", b"x"]),
            Err(CommandError::InvalidOffset)
        );
        assert!(matches!(
            parse(&[b"HISTORY", b"news", b"5", b"1", b"2"]),
            Err(CommandError::WrongArity("history"))
        ));
        assert!(matches!(
            parse(&[b"NODES", b"x"]),
            Err(CommandError::WrongArity("nodes"))
        ));
        assert_eq!(
            parse(&[b"online", b"news"]),
            Ok(Command::Online {
                room: Some("news".into())
            })
        );
    }

    #[test]
    fn info_section_is_optional_and_lowercased() {
        assert_eq!(parse(&[b"INFO"]), Ok(Command::Info(None)));
        assert_eq!(
            parse(&[b"INFO", b"Stats"]),
            Ok(Command::Info(Some("stats".into())))
        );
    }

    #[test]
    fn quit_ignores_its_arguments() {
        assert_eq!(parse(&[b"QUIT"]), Ok(Command::Quit));
        assert_eq!(parse(&[b"quit", b"now", b"please"]), Ok(Command::Quit));
    }

    #[test]
    fn rejects_wrong_arity_for_every_command() {
        let cases: &[(&[&[u8]], &str)] = &[
            (&[b"PING", b"a", b"b"], "ping"),
            (&[b"AUTH"], "auth"),
            (&[b"AUTH", b"u", b"p", b"x"], "auth"),
            (&[b"PUBLISH", b"news"], "publish"),
            (&[b"PUBLISH", b"news", b"a", b"b"], "publish"),
            (&[b"BROADCAST"], "broadcast"),
            (&[b"BROADCAST", b"a", b"b"], "broadcast"),
            (&[b"SEND", b"u1"], "send"),
            (&[b"JOIN", b"u1"], "join"),
            (&[b"LEAVE", b"u1", b"news", b"x"], "leave"),
            (&[b"KICK"], "kick"),
            (&[b"KICK", b"u1", b"why", b"x"], "kick"),
            (&[b"ONLINE", b"a", b"b"], "online"),
            (&[b"INFO", b"a", b"b"], "info"),
        ];
        for (args, name) in cases {
            assert_eq!(parse(args), Err(CommandError::WrongArity(name)), "{name}");
        }
    }

    #[test]
    fn checks_arity_before_names() {
        assert_eq!(
            parse(&[b"PUBLISH", b"bad room"]),
            Err(CommandError::WrongArity("publish"))
        );
    }

    #[test]
    fn rejects_invalid_room_and_user_names() {
        assert_eq!(
            parse(&[b"PUBLISH", b"a,b", b"hi"]),
            Err(CommandError::InvalidName("room"))
        );
        assert_eq!(
            parse(&[b"SEND", b"", b"hi"]),
            Err(CommandError::InvalidName("user"))
        );
        assert_eq!(
            parse(&[b"JOIN", b"u1", b"two words"]),
            Err(CommandError::InvalidName("room"))
        );
        assert_eq!(
            parse(&[b"LEAVE", "caf\u{e9}".as_bytes(), b"news"]),
            Err(CommandError::InvalidName("user"))
        );
        assert_eq!(
            parse(&[b"KICK", &[b'u'; 129]]),
            Err(CommandError::InvalidName("user"))
        );
        assert_eq!(
            parse(&[b"ONLINE", b"a\tb"]),
            Err(CommandError::InvalidName("room"))
        );
    }

    #[test]
    fn rejects_payload_over_max_message() {
        let big = [b'x'; MAX + 1];
        assert_eq!(
            parse(&[b"PUBLISH", b"news", &big]),
            Err(CommandError::PayloadTooLarge)
        );
        assert_eq!(
            parse(&[b"BROADCAST", &big]),
            Err(CommandError::PayloadTooLarge)
        );
        assert_eq!(
            parse(&[b"SEND", b"u1", &big]),
            Err(CommandError::PayloadTooLarge)
        );
        assert!(parse(&[b"PUBLISH", b"news", &[b'x'; MAX]]).is_ok());
    }

    #[test]
    fn rejects_unknown_command_naming_it() {
        assert_eq!(
            parse(&[b"SUBSCRIBE", b"news"]),
            Err(CommandError::Unknown("SUBSCRIBE".into()))
        );
        assert_eq!(
            CommandError::Unknown("foo".into()).message(),
            "ERR unknown command 'foo'"
        );
        assert_eq!(
            Command::parse(Vec::new(), MAX),
            Err(CommandError::Unknown(String::new()))
        );
    }

    #[test]
    fn unknown_command_name_is_escaped_and_truncated_to_128_bytes() {
        assert_eq!(
            parse(&[b"a\r\nb'\\\xff"]),
            Err(CommandError::Unknown("a\\x0d\\x0ab\\x27\\x5c\\xff".into()))
        );
        let long = [b'z'; 300];
        assert_eq!(parse(&[&long]), Err(CommandError::Unknown("z".repeat(128))));
    }

    #[test]
    fn error_messages_match_the_control_port_spec() {
        assert_eq!(
            CommandError::WrongArity("publish").message(),
            "ERR wrong number of arguments for 'publish' command"
        );
        assert_eq!(
            CommandError::InvalidName("room").message(),
            "ERR invalid room name"
        );
        assert_eq!(
            CommandError::InvalidName("user").message(),
            "ERR invalid user name"
        );
        assert_eq!(
            CommandError::InvalidReason.message(),
            "ERR kick reason must be UTF-8 of at most 123 bytes"
        );
        assert_eq!(
            CommandError::PayloadTooLarge.message(),
            "ERR payload exceeds --max-message"
        );
        assert_eq!(too_large_error(), CommandError::PayloadTooLarge);
    }

    #[test]
    fn only_auth_hello_and_quit_are_allowed_before_auth() {
        // HELLO too: it can carry AUTH, and answers -NOAUTH itself without it.
        for name in [&b"AUTH"[..], b"auth", b"Quit", b"HELLO", b"hello"] {
            assert!(allowed_before_auth(name));
        }
        for name in [
            &b"PING"[..],
            b"INFO",
            b"BROADCAST",
            b"AUTHX",
            b"",
            b"HELLOX",
        ] {
            assert!(!allowed_before_auth(name));
        }
    }

    #[test]
    fn auth_errors_match_redis_replies() {
        assert_eq!(
            AuthError::NoAuth.message(),
            "NOAUTH Authentication required."
        );
        assert!(AuthError::WrongPass.message().starts_with("WRONGPASS "));
        assert!(AuthError::NotConfigured.message().starts_with("ERR "));
    }

    proptest! {
        #[test]
        fn arbitrary_arguments_never_panic_and_errors_stay_on_one_line(
            args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..5),
            known in prop::sample::select(&["publish", "SEND", "kick", "Join", "online", "auth", "x"][..]),
            replace_name in any::<bool>(),
        ) {
            let mut args = args;
            if replace_name && !args.is_empty() {
                args[0] = known.as_bytes().to_vec();
            }
            if let Err(e) = Command::parse(args, MAX) {
                let msg = e.message();
                prop_assert!(msg.starts_with("ERR "));
                prop_assert!(!msg.contains('\r') && !msg.contains('\n'));
            }
        }
    }
}
