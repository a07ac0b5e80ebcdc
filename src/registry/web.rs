//! The embedded start page: how to use this instance, builds in progress
//! and recent builds, live (a server-sent event stream, `/events`, that
//! sends a snapshot of [`crate::shim::activity`] on every change), and the
//! most recent build errors (what failed; details only with
//! `NIXERY_DEBUG_ERRORS`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Html;

use super::AppState;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// How long one event stream lasts: then it ends, and the browser's
/// EventSource opens another (after [`EVENT_STREAM_RETRY`]), so that no
/// stream holds a connection forever.
pub const EVENT_STREAM_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);
/// How long a browser waits before it opens the next stream.
const EVENT_STREAM_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Counts an open event stream in the metrics while it lives.
struct StreamGauge(Arc<crate::shim::metrics::Metrics>);

impl StreamGauge {
    fn new(metrics: Arc<crate::shim::metrics::Metrics>) -> StreamGauge {
        metrics.event_streams_open.inc();
        StreamGauge(metrics)
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.event_streams_open.dec();
    }
}

/// `GET /events`: a snapshot of the builds in progress and finished, at
/// once and after every change (server-sent events), for
/// [`EVENT_STREAM_LIFETIME`]; at most [`crate::shim::activity::MAX_WATCHERS`]
/// streams at once (then `503`, and the browser tries again).
pub async fn events(State(state): State<Arc<AppState>>) -> axum::response::Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use axum::response::IntoResponse;
    let Some(watcher) = state.shim.activity().watch() else {
        return super::errors::ErrorCode::Unavailable
            .plain()
            .message("too many start pages are watching; try again in a moment")
            .retry_after(EVENT_STREAM_RETRY.as_secs().max(1))
            .into_response();
    };
    let gauge = StreamGauge::new(state.shim.metrics_handle());
    let until = tokio::time::Instant::now() + EVENT_STREAM_LIFETIME;
    let stream = futures::stream::unfold((watcher, gauge, true), move |(mut watcher, gauge, first)| {
        let state = state.clone();
        async move {
            if !first {
                match tokio::time::timeout_at(until, watcher.changes.changed()).await {
                    Ok(Ok(())) => {}
                    // The stream's time is up, or the shim is stopping.
                    _ => return None,
                }
            }
            watcher.changes.borrow_and_update();
            let event = Event::default().json_data(state.shim.activity().snapshot()).unwrap_or_else(|_| Event::default().comment("snapshot unavailable"));
            let event = if first { event.retry(EVENT_STREAM_RETRY) } else { event };
            Some((Ok::<_, std::convert::Infallible>(event), (watcher, gauge, false)))
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// A duration in seconds as people say it: `42 s`, `5 min`, `3 h`, `2 days`.
fn ago_text(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        7200..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

/// The pull commands for this server: plain HTTP needs podman's
/// `--tls-verify=false`, and docker pulls over plain HTTP only from
/// loopback or a registry listed in its daemon's `insecure-registries`.
fn pull_commands(host: &str, tls: bool) -> String {
    if tls {
        format!("podman pull {host}/shell/hello\ndocker pull {host}/shell/jq/hello")
    } else {
        format!(
            "podman pull --tls-verify=false {host}/shell/hello\ndocker pull {host}/shell/jq/hello\n\n# this server speaks plain HTTP: docker pulls from it when it is\n# on 127.0.0.1 or listed in insecure-registries (/etc/docker/daemon.json)"
        )
    }
}

/// `GET /`.
pub async fn start_page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Html<String> {
    let host = escape(headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("HOST"));
    let source = escape(&state.source_description);
    let shell = escape(&state.shim.config().meta.shell.join(", "));
    let pulls = pull_commands(&host, state.tls);
    // The builds as they are now; the event stream keeps them current.
    let snapshot = state.shim.activity().snapshot();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let list = |items: Vec<String>| -> String {
        if items.is_empty() {
            "<li>none</li>".to_string()
        } else {
            items.iter().map(|i| format!("<li>{}</li>", escape(i))).collect()
        }
    };
    let running = list(snapshot.running.iter().map(|r| format!("{}: {} for {} s", r.image, r.stage, now.saturating_sub(r.started))).collect());
    let recent = list(
        snapshot
            .recent
            .iter()
            .map(|f| {
                format!(
                    "{}: {} in {:.1} s, {} layers reused, {} packed",
                    f.image,
                    if f.ok { "built" } else { "failed" },
                    f.ms as f64 / 1000.0,
                    f.reused,
                    f.packed
                )
            })
            .collect(),
    );
    let errors = state.shim.recent_errors();
    let errors_html = if errors.is_empty() {
        "<p>No build errors so far.</p>".to_string()
    } else {
        let rows: String = errors
            .iter()
            .map(|e| {
                let at = humantime::format_rfc3339_seconds(e.at).to_string().replace('T', " ").replace('Z', " UTC");
                let ago = SystemTime::now().duration_since(e.at).map(|d| d.as_secs()).unwrap_or(0);
                // Full messages carry Nix logs and host paths: only when
                // the operator asked for them.
                let details = if state.debug_errors { format!("<pre>{}</pre>", escape(&e.message)) } else { String::new() };
                format!("<li><b>{}</b>: {}<br><small>at {at} ({} ago)</small>{details}</li>", escape(&e.image), escape(&e.summary), ago_text(ago))
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
<pre>{pulls}</pre>
<ul>
<li>Each path component is a package attribute name; order does not matter. Dotted names reach nested sets (<code>xorg.xev</code>).</li>
<li><code>shell</code> adds {shell}; <code>arm64</code> builds for aarch64-linux.</li>
<li>Packages come from {source}.</li>
</ul>
<h2>Builds in progress</h2>
<ul id="running">{running}</ul>
<h2>Recent builds</h2>
<ul id="recent">{recent}</ul>
<h2>Recent build errors</h2>
{errors_html}
<script>
const text = (tag, s) => {{ const e = document.createElement(tag); e.textContent = s; return e; }};
const fill = (id, items, line) => {{
  const ul = document.getElementById(id);
  ul.replaceChildren(...(items.length ? items.map(i => text("li", line(i))) : [text("li", "none")]));
}};
const events = new EventSource("/events");
events.onmessage = (m) => {{
  const s = JSON.parse(m.data);
  const now = Date.now() / 1000;
  fill("running", s.running, r => `${{r.image}}: ${{r.stage}} for ${{Math.max(0, Math.round(now - r.started))}} s`);
  fill("recent", s.recent, f => `${{f.image}}: ${{f.ok ? "built" : "failed"}} in ${{(f.ms / 1000).toFixed(1)}} s, ${{f.reused}} layers reused, ${{f.packed}} packed`);
}};
</script>
</body></html>
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_commands_fit_how_the_server_speaks() {
        let plain = pull_commands("10.0.0.5:8080", false);
        assert!(plain.starts_with("podman pull --tls-verify=false 10.0.0.5:8080/shell/hello\n"), "{plain}");
        assert!(plain.contains("insecure-registries"), "{plain}");
        let tls = pull_commands("nixery.example.com", true);
        assert_eq!(tls, "podman pull nixery.example.com/shell/hello\ndocker pull nixery.example.com/shell/jq/hello");
    }

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(ago_text(5), "5 s");
        assert_eq!(ago_text(600), "10 min");
        assert_eq!(ago_text(3 * 3600), "3 h");
        assert_eq!(ago_text(5 * 86_400), "5 days");
    }
}
