//! The HTTP API's routes: which request becomes which control command, and how the
//! command's reply becomes JSON.
//!
//! Pure: a parsed request in, a route or an error with its status out; a RESP reply
//! in, a status and a JSON body out. Every push and membership call is turned into
//! the same argument list a Redis client would send and parsed by the control
//! port's own `Command::parse`, so names, sizes and semantics cannot drift apart
//! between the two doors; the dispatcher runs it like any control command.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::request::{Method, Request};
use crate::control::reply::Reply;

/// Most rooms `GET /api/rooms` lists.
pub const MAX_TOP_ROOMS: usize = 1000;

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Run this control command; render its reply as `shape`.
    Command { args: Vec<Vec<u8>>, shape: Shape },
    /// `GET /api/info[?section=]`: INFO as JSON.
    Info(Option<String>),
    /// `GET /api/rooms[?top=N]`: the rooms with the most members here.
    Rooms(usize),
    /// `GET /metrics`.
    Metrics,
    /// `GET /`: the dashboard page.
    Dashboard,
    /// `GET /healthz` (liveness) or `/readyz` (readiness, when true), as on the
    /// WebSocket port.
    Probe { ready: bool },
}

/// How a command's reply reads in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// PUBLISH / BROADCAST / SEND: `{"recipients":N}`.
    Recipients,
    /// JOIN / LEAVE: `{"connections":N}`, the user's connections affected.
    Connections,
    /// KICK: `{"closed":N}`.
    Closed,
    /// ONLINE: `{"online":N}`.
    Online,
    /// HISTORY: `{"epoch":…,"offset":…,"messages":[…]}`.
    History,
    /// NODES: `{"nodes":[{…},…]}`.
    Nodes,
}

/// A request the API refuses, with its status.
#[derive(Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// For 405: the methods the path takes.
    pub allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            allow: None,
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    /// The JSON body of the error reply.
    pub fn body(&self) -> String {
        json!({ "error": self.message }).to_string()
    }
}

/// Whether the path is one `--api-key` protects: everything but the dashboard
/// page itself (which asks for the key and sends it with its own calls).
/// The probes are not protected either: orchestrators call them without secrets.
pub fn needs_key(path: &str) -> bool {
    !matches!(path, "/" | "/dashboard" | "/healthz" | "/readyz")
}

/// Builds a route from a request whose method fits the path.
type Handler = fn(&Request, usize) -> Result<Route, ApiError>;

/// Maps a request to its route. `max_message` bounds a pushed payload (the body
/// itself was already bounded by the request parser).
pub fn route(req: &Request, max_message: usize) -> Result<Route, ApiError> {
    let path = req.path.as_str();
    let (allow, route): (&'static str, Handler) = match path {
        "/" | "/dashboard" => ("GET, HEAD", |_, _| Ok(Route::Dashboard)),
        "/metrics" => ("GET, HEAD", |_, _| Ok(Route::Metrics)),
        "/healthz" => ("GET, HEAD", |_, _| Ok(Route::Probe { ready: false })),
        "/readyz" => ("GET, HEAD", |_, _| Ok(Route::Probe { ready: true })),
        "/api/info" => ("GET", |r, _| Ok(Route::Info(param(r, "section")))),
        "/api/online" => ("GET", |r, _| {
            let mut args = vec![b"ONLINE".to_vec()];
            args.extend(param(r, "room").map(String::into_bytes));
            Ok(Route::Command {
                args,
                shape: Shape::Online,
            })
        }),
        "/api/nodes" => ("GET", |_, _| {
            Ok(Route::Command {
                args: vec![b"NODES".to_vec()],
                shape: Shape::Nodes,
            })
        }),
        "/api/history" => ("GET", |r, _| {
            let room = need(r, None, "room")?;
            let mut args = vec![b"HISTORY".to_vec(), room.into_bytes()];
            let count = param(r, "count");
            let before = param(r, "before");
            if before.is_some() && count.is_none() {
                // HISTORY's arguments are positional: the page size comes first.
                return Err(ApiError::bad("before= needs count= (the page size)"));
            }
            args.extend(count.map(String::into_bytes));
            args.extend(before.map(String::into_bytes));
            Ok(Route::Command {
                args,
                shape: Shape::History,
            })
        }),
        "/api/rooms" => ("GET", |r, _| {
            let top = match param(r, "top") {
                None => 20,
                Some(t) => t
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| (1..=MAX_TOP_ROOMS).contains(&n))
                    .ok_or_else(|| {
                        ApiError::bad(format!("top must be between 1 and {MAX_TOP_ROOMS}"))
                    })?,
            };
            Ok(Route::Rooms(top))
        }),
        "/api/publish" => ("POST", |r, max| push(r, max, "PUBLISH", Some("room"))),
        "/api/broadcast" => ("POST", |r, max| push(r, max, "BROADCAST", None)),
        "/api/send" => ("POST", |r, max| push(r, max, "SEND", Some("user"))),
        "/api/join" => ("POST", |r, _| membership(r, "JOIN")),
        "/api/leave" => ("POST", |r, _| membership(r, "LEAVE")),
        "/api/kick" => ("POST", |r, _| {
            let body = json_body(r, &["user", "reason"])?;
            let user = need(r, body.as_ref(), "user")?;
            let mut args = vec![b"KICK".to_vec(), user.into_bytes()];
            if let Some(reason) = field(r, body.as_ref(), "reason")? {
                args.push(reason.into_bytes());
            }
            Ok(Route::Command {
                args,
                shape: Shape::Closed,
            })
        }),
        _ => return Err(ApiError::new(404, format!("no such endpoint: {path}"))),
    };
    let method_ok = match req.method {
        Method::Get | Method::Head => allow.starts_with("GET"),
        Method::Post => allow == "POST",
        Method::Other => false,
    };
    if !method_ok {
        return Err(ApiError {
            status: 405,
            message: format!("{path} takes {allow}"),
            allow: Some(allow),
        });
    }
    route(req, max_message)
}

/// PUBLISH / BROADCAST / SEND: a JSON body `{"room"|"user":…,"data":…}`, or any other
/// body taken as the payload itself with the name in the query.
fn push(
    req: &Request,
    max_message: usize,
    command: &str,
    name: Option<&'static str>,
) -> Result<Route, ApiError> {
    let mut args = vec![command.as_bytes().to_vec()];
    let payload = if req.json {
        let allowed: &[&str] = match name {
            Some("room") => &["room", "data"],
            Some(_) => &["user", "data"],
            None => &["data"],
        };
        let body = json_body(req, allowed)?;
        if let Some(n) = name {
            args.push(need(req, body.as_ref(), n)?.into_bytes());
        }
        match body.as_ref().and_then(|b| b.get("data")) {
            None => return Err(ApiError::bad("missing field: data")),
            // A string is the payload as it is; any other JSON value is pushed as its
            // compact JSON text, so `"data":{"a":1}` needs no double encoding.
            Some(Value::String(s)) => s.clone().into_bytes(),
            Some(v) => v.to_string().into_bytes(),
        }
    } else {
        if let Some(n) = name {
            args.push(need(req, None, n)?.into_bytes());
        }
        req.body.clone()
    };
    if payload.len() > max_message {
        return Err(ApiError::new(
            413,
            format!(
                "payload of {} bytes is over --max-message ({max_message})",
                payload.len()
            ),
        ));
    }
    args.push(payload);
    Ok(Route::Command {
        args,
        shape: Shape::Recipients,
    })
}

/// JOIN / LEAVE: `user` and `room` from a JSON body or the query.
fn membership(req: &Request, command: &str) -> Result<Route, ApiError> {
    let body = json_body(req, &["user", "room"])?;
    let user = need(req, body.as_ref(), "user")?;
    let room = need(req, body.as_ref(), "room")?;
    Ok(Route::Command {
        args: vec![
            command.as_bytes().to_vec(),
            user.into_bytes(),
            room.into_bytes(),
        ],
        shape: Shape::Connections,
    })
}

/// The body as a JSON object when the request says it is JSON (`None` otherwise).
/// Fields outside `allowed` are refused, so a misspelt name is an error rather than
/// a silently missing value.
fn json_body(req: &Request, allowed: &[&str]) -> Result<Option<Map<String, Value>>, ApiError> {
    if !req.json {
        // Only pushes take a raw body (their payload), and they do not come here.
        if !req.body.is_empty() {
            return Err(ApiError::new(
                415,
                "send a JSON body with Content-Type: application/json, or the fields in the query",
            ));
        }
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(map)) => {
            if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(ApiError::bad(format!(
                    "unknown field: {k} (expected {})",
                    allowed.join(", ")
                )));
            }
            Ok(Some(map))
        }
        Ok(_) => Err(ApiError::bad("body must be a JSON object")),
        Err(e) => Err(ApiError::bad(format!("body is not valid JSON: {e}"))),
    }
}

/// A string field from the JSON body, else from the query.
fn field(
    req: &Request,
    body: Option<&Map<String, Value>>,
    name: &str,
) -> Result<Option<String>, ApiError> {
    match body.and_then(|b| b.get(name)) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad(format!("field {name} must be a string"))),
        None => Ok(param(req, name)),
    }
}

fn need(req: &Request, body: Option<&Map<String, Value>>, name: &str) -> Result<String, ApiError> {
    field(req, body, name)?.ok_or_else(|| ApiError::bad(format!("missing field: {name}")))
}

fn param(req: &Request, name: &str) -> Option<String> {
    req.query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// The status and JSON body for a command's reply.
pub fn render(shape: Shape, reply: &Reply) -> (u16, String) {
    if let Reply::Error(e) = reply {
        let text = String::from_utf8_lossy(e).into_owned();
        // Redis error codes: TRYAGAIN means the cluster could not take it now.
        let status = if text.starts_with("TRYAGAIN") {
            503
        } else {
            400
        };
        let message = text.strip_prefix("ERR ").unwrap_or(&text);
        return (status, json!({ "error": message }).to_string());
    }
    let value = match (shape, reply) {
        (Shape::Recipients, Reply::Integer(n)) => json!({ "recipients": n }),
        (Shape::Connections, Reply::Integer(n)) => json!({ "connections": n }),
        (Shape::Closed, Reply::Integer(n)) => json!({ "closed": n }),
        (Shape::Online, Reply::Integer(n)) => json!({ "online": n }),
        (Shape::History, Reply::Array(Some(items))) => match history(items) {
            Some(v) => v,
            None => return unexpected(),
        },
        (Shape::Nodes, Reply::Array(Some(items))) => {
            let nodes: Vec<Value> = items
                .iter()
                .map(|n| match n {
                    Reply::Array(Some(pairs)) => Value::Object(
                        pairs
                            .chunks(2)
                            .filter_map(|kv| match kv {
                                [Reply::Bulk(Some(k)), v] => {
                                    Some((String::from_utf8_lossy(k).into_owned(), scalar(v)))
                                }
                                _ => None,
                            })
                            .collect(),
                    ),
                    other => scalar(other),
                })
                .collect();
            json!({ "nodes": nodes })
        }
        _ => return unexpected(),
    };
    (200, value.to_string())
}

fn unexpected() -> (u16, String) {
    (
        500,
        json!({ "error": "unexpected reply from the command" }).to_string(),
    )
}

/// `[epoch, offset, [[offset, payload], …]]` as an object.
fn history(items: &[Reply]) -> Option<Value> {
    let [epoch, Reply::Integer(offset), Reply::Array(Some(entries))] = items else {
        return None;
    };
    let epoch = match epoch {
        Reply::Bulk(Some(e)) => Value::String(String::from_utf8_lossy(e).into_owned()),
        _ => Value::Null,
    };
    let messages: Option<Vec<Value>> = entries
        .iter()
        .map(|e| match e {
            Reply::Array(Some(pair)) => match pair.as_slice() {
                [Reply::Integer(o), Reply::Bulk(Some(p))] => {
                    let mut m = payload_fields(p);
                    m.insert("offset".into(), json!(o));
                    Some(Value::Object(m))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    Some(json!({ "epoch": epoch, "offset": offset, "messages": messages? }))
}

/// A payload as `data` when it is UTF-8 text, `data_base64` otherwise.
fn payload_fields(p: &[u8]) -> Map<String, Value> {
    let mut m = Map::new();
    match std::str::from_utf8(p) {
        Ok(s) => m.insert("data".into(), Value::String(s.to_string())),
        Err(_) => m.insert(
            "data_base64".into(),
            Value::String(base64::engine::general_purpose::STANDARD.encode(p)),
        ),
    };
    m
}

fn scalar(r: &Reply) -> Value {
    match r {
        Reply::Integer(n) => json!(n),
        Reply::Bulk(Some(b)) | Reply::Simple(b) => {
            let s = String::from_utf8_lossy(b);
            match s.parse::<i64>() {
                Ok(n) => json!(n),
                Err(_) => Value::String(s.into_owned()),
            }
        }
        _ => Value::Null,
    }
}

/// INFO's `# Section` / `key:value` text as `{"section":{"key":value}}`; values
/// that are integers or decimals become numbers, `a=1,b=2` lists become objects.
pub fn info_json(text: &str) -> Value {
    let mut out = Map::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("# ") {
            let name = name.trim().to_ascii_lowercase();
            out.entry(name.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            section = Some(name);
            continue;
        }
        let (Some(s), Some((k, v))) = (&section, line.split_once(':')) else {
            continue;
        };
        if let Some(Value::Object(m)) = out.get_mut(s) {
            m.insert(k.to_string(), info_value(v));
        }
    }
    Value::Object(out)
}

fn info_value(v: &str) -> Value {
    if let Ok(n) = v.parse::<i64>() {
        return json!(n);
    }
    if let Ok(f) = v.parse::<f64>() {
        if f.is_finite() && v.contains('.') {
            return json!(f);
        }
    }
    if v.contains('=') && v.split(',').all(|p| p.contains('=')) {
        return Value::Object(
            v.split(',')
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), info_value(v)))
                .collect(),
        );
    }
    Value::String(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, target: &str, json: bool, body: &str) -> Request {
        let (path, q) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method,
            path: path.into(),
            query: q
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (k.into(), v.into())
                })
                .collect(),
            keep_alive: true,
            authorization: None,
            json,
            body: body.as_bytes().to_vec(),
        }
    }

    fn args(r: Result<Route, ApiError>) -> Vec<String> {
        match r {
            Ok(Route::Command { args, .. }) => args
                .into_iter()
                .map(|a| String::from_utf8(a).unwrap())
                .collect(),
            other => panic!("not a command: {other:?}"),
        }
    }

    #[test]
    fn pushes_take_json_or_a_raw_body_with_the_name_in_the_query() {
        let r = req(
            Method::Post,
            "/api/publish",
            true,
            r#"{"room":"news","data":"hi"}"#,
        );
        assert_eq!(args(route(&r, 100)), ["PUBLISH", "news", "hi"]);
        let r = req(Method::Post, "/api/publish?room=news", false, "raw bytes");
        assert_eq!(args(route(&r, 100)), ["PUBLISH", "news", "raw bytes"]);
        let r = req(
            Method::Post,
            "/api/send",
            true,
            r#"{"user":"u","data":{"a":[1]}}"#,
        );
        assert_eq!(args(route(&r, 100)), ["SEND", "u", r#"{"a":[1]}"#]);
        let r = req(Method::Post, "/api/broadcast", false, "x");
        assert_eq!(args(route(&r, 100)), ["BROADCAST", "x"]);
        let r = req(
            Method::Post,
            "/api/kick",
            true,
            r#"{"user":"u","reason":"bye"}"#,
        );
        assert_eq!(args(route(&r, 100)), ["KICK", "u", "bye"]);
        let r = req(Method::Post, "/api/join?user=u&room=r", false, "");
        assert_eq!(args(route(&r, 100)), ["JOIN", "u", "r"]);
        let r = req(Method::Get, "/api/online?room=r", false, "");
        assert_eq!(args(route(&r, 100)), ["ONLINE", "r"]);
    }

    #[test]
    fn refusals_carry_their_status() {
        let status = |r: Request| route(&r, 4).err().map(|e| e.status);
        assert_eq!(status(req(Method::Get, "/api/nope", false, "")), Some(404));
        assert_eq!(
            status(req(Method::Get, "/api/publish", false, "")),
            Some(405)
        );
        assert_eq!(status(req(Method::Post, "/api/info", false, "")), Some(405));
        assert_eq!(status(req(Method::Other, "/metrics", false, "")), Some(405));
        assert_eq!(
            status(req(Method::Post, "/api/publish", true, "{")),
            Some(400)
        );
        assert_eq!(
            status(req(
                Method::Post,
                "/api/publish",
                true,
                r#"{"rooms":"a","data":"x"}"#
            )),
            Some(400)
        );
        assert_eq!(
            status(req(Method::Post, "/api/publish", true, r#"{"data":"x"}"#)),
            Some(400)
        );
        assert_eq!(
            status(req(Method::Post, "/api/publish?room=a", false, "12345")),
            Some(413)
        );
        assert_eq!(
            status(req(Method::Post, "/api/join", false, "user=u")),
            Some(415)
        );
        assert_eq!(
            status(req(Method::Get, "/api/rooms?top=0", false, "")),
            Some(400)
        );
        let e = route(&req(Method::Get, "/api/publish", false, ""), 4).unwrap_err();
        assert_eq!(e.allow, Some("POST"));
    }

    #[test]
    fn replies_render_as_json_with_their_status() {
        assert_eq!(
            render(Shape::Recipients, &Reply::Integer(3)),
            (200, r#"{"recipients":3}"#.into())
        );
        let (s, b) = render(
            Shape::Recipients,
            &Reply::Error(b"ERR bad room name".to_vec()),
        );
        assert_eq!((s, b.as_str()), (400, r#"{"error":"bad room name"}"#));
        let (s, _) = render(Shape::Online, &Reply::Error(b"TRYAGAIN broker".to_vec()));
        assert_eq!(s, 503);
        let h = Reply::Array(Some(vec![
            Reply::Bulk(Some(b"e1".to_vec())),
            Reply::Integer(2),
            Reply::Array(Some(vec![Reply::Array(Some(vec![
                Reply::Integer(2),
                Reply::Bulk(Some(vec![0xff])),
            ]))])),
        ]));
        let (s, b) = render(Shape::History, &h);
        assert_eq!(s, 200);
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["messages"][0]["data_base64"], "/w==");
        assert_eq!(v["offset"], 2);
        assert_eq!(render(Shape::Online, &Reply::Simple(b"OK".to_vec())).0, 500);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_requests_never_panic(
            path in proptest::sample::select(vec![
                "/", "/metrics", "/api/info", "/api/online", "/api/nodes", "/api/history",
                "/api/rooms", "/api/publish", "/api/broadcast", "/api/send", "/api/join",
                "/api/leave", "/api/kick", "/x",
            ]),
            method in proptest::sample::select(vec![Method::Get, Method::Head, Method::Post, Method::Other]),
            json in proptest::bool::ANY,
            query in proptest::collection::vec(("[a-z]{1,6}", ".{0,8}"), 0..4),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let r = Request { method, path: path.into(), query, keep_alive: true, authorization: None, json, body };
            let _ = route(&r, 16);
        }

        #[test]
        fn arbitrary_json_bodies_never_panic(body in "\\{(\"(room|user|data|reason|x)\":(\"[a-z]{0,4}\"|[0-9]{1,3}|null|\\[\\]|\\{\\}),?){0,4}\\}") {
            for path in ["/api/publish", "/api/send", "/api/broadcast", "/api/join", "/api/kick"] {
                let r = req(Method::Post, path, true, &body);
                let _ = route(&r, 16);
            }
        }
    }

    #[test]
    fn info_text_becomes_sections_of_typed_values() {
        let v = info_json("# Server\r\nreactors:2\r\nname:x\r\n\r\n# Clients\r\nreactor_0:connections=1,sockets=2\r\nratio:0.5\r\n");
        assert_eq!(v["server"]["reactors"], 2);
        assert_eq!(v["server"]["name"], "x");
        assert_eq!(v["clients"]["reactor_0"]["sockets"], 2);
        assert_eq!(v["clients"]["ratio"], 0.5);
    }
}
