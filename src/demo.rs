//! The demo page (`wspush --demo`): one self-contained page at `GET /` on the
//! WebSocket port and the browser client's modules it imports, compiled into the
//! binary so the page is always the client of this very server.
//!
//! Pure: a path in, a complete HTTP response out (or `None` for a path that is not
//! an asset). Never reads files at run time.

/// The page; `{{WS_PATH}}` is replaced by the configured WebSocket path.
const PAGE: &str = include_str!("../clients/js/demo.html");

/// The client's modules, as the page imports them (`/client/<name>`).
const MODULES: [(&str, &str); 5] = [
    ("wspush.js", include_str!("../clients/js/wspush.js")),
    ("backoff.js", include_str!("../clients/js/backoff.js")),
    ("positions.js", include_str!("../clients/js/positions.js")),
    ("url.js", include_str!("../clients/js/url.js")),
    ("jwt.js", include_str!("../clients/js/jwt.js")),
];

/// Whether `path` is one of the demo's assets.
pub fn is_asset(path: &str) -> bool {
    path == "/" || module(path).is_some()
}

fn module(path: &str) -> Option<&'static str> {
    let name = path.strip_prefix("/client/")?;
    MODULES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, body)| *body)
}

/// The full response for `path` (200 with the asset, then close), if it is one.
pub fn response(path: &str, ws_path: &str) -> Option<Vec<u8>> {
    let (kind, body) = if path == "/" {
        (
            "text/html; charset=utf-8",
            PAGE.replace("{{WS_PATH}}", ws_path),
        )
    } else {
        ("text/javascript; charset=utf-8", module(path)?.to_string())
    };
    Some(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_page_with_the_path_and_every_module_it_imports() {
        let page = String::from_utf8(response("/", "/push").unwrap()).unwrap();
        assert!(page.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/html"));
        assert!(page.contains("/push") && !page.contains("{{WS_PATH}}"));
        let (head, body) = page.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        for (name, _) in MODULES {
            let r =
                String::from_utf8(response(&format!("/client/{name}"), "/ws").unwrap()).unwrap();
            assert!(r.contains("Content-Type: text/javascript"), "{name}");
        }
        // Every module a served module imports is served too.
        for (_, src) in MODULES {
            for line in src.lines().filter(|l| l.trim_start().starts_with("import")) {
                if let Some(spec) = line.split(['\'', '"']).nth(1) {
                    let name = spec.trim_start_matches("./");
                    assert!(module(&format!("/client/{name}")).is_some(), "{line}");
                }
            }
        }
    }

    #[test]
    fn anything_else_is_not_an_asset() {
        for p in [
            "/client/",
            "/client/../Cargo.toml",
            "/index.html",
            "/client/x.js",
            "",
        ] {
            assert!(!is_asset(p) && response(p, "/ws").is_none(), "{p}");
        }
    }
}
