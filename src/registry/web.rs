//! The embedded start page: how to use this instance, and the most recent
//! build errors (what failed; details only with `NIXERY_DEBUG_ERRORS`).

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Html;

use super::AppState;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `GET /`.
pub async fn start_page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Html<String> {
    let host = escape(headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("HOST"));
    let source = escape(&state.source_description);
    let shell = escape(&state.shim.config().meta.shell.join(", "));
    let errors = state.shim.recent_errors();
    let errors_html = if errors.is_empty() {
        "<p>No build errors so far.</p>".to_string()
    } else {
        let rows: String = errors
            .iter()
            .map(|e| {
                let secs = e.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                // Full messages carry Nix logs and host paths: only when
                // the operator asked for them.
                let text = if state.debug_errors { &e.message } else { &e.summary };
                format!("<li><b>{}</b> (at {secs} s since the epoch)<pre>{}</pre></li>", escape(&e.image), escape(text))
            })
            .collect();
        format!("<ul>{rows}</ul>")
    };
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nixery</title>
<style>body{{font-family:sans-serif;max-width:50em;margin:2em auto;padding:0 1em}}pre,code{{background:#f4f4f4}}pre{{padding:.5em;overflow:auto}}</style>
</head><body>
<h1>nixery</h1>
<p>Container images built on demand from Nix packages. The image name is the list of packages:</p>
<pre>podman pull {host}/shell/hello
docker pull {host}/shell/jq/hello</pre>
<ul>
<li>Each path component is a package attribute name; order does not matter. Dotted names reach nested sets (<code>xorg.xev</code>).</li>
<li><code>shell</code> adds {shell}; <code>arm64</code> builds for aarch64-linux.</li>
<li>Packages come from {source}.</li>
</ul>
<h2>Recent build errors</h2>
{errors_html}
</body></html>
"#
    ))
}
