//! `zkbridge explain` (design §8): reads the nodes and zkbridge's znodes,
//! asks the running instance at `bridge.listen` what its queue holds for
//! the path, and prints one line per target that starts with its state.

use std::process::ExitCode;
use std::time::Duration;

use crate::explain::{self, QueueReport};

pub async fn explain(path: &std::path::Path, route: &str, node_path: &str, json: bool) -> ExitCode {
    let resolved = match super::load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let Some(configured) = resolved.route(route) else {
        eprintln!("zkbridge explain: {}", super::not_a_mirror(&resolved, route, "explain"));
        return ExitCode::from(2);
    };
    let relative = match explain::relative_to(configured, node_path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("zkbridge explain: {e}");
            return ExitCode::from(2);
        }
    };
    let mut clients = crate::role::store::Clients::new();
    for m in configured.members() {
        if clients.contains_key(&m.ensemble) {
            continue;
        }
        let client = super::connect_within(resolved.ensemble(&m.ensemble))
            .await
            .map_err(|e| format!("ensemble {}: {e}", m.ensemble));
        clients.insert(m.ensemble.clone(), client);
    }
    let answer = ask_instance(&resolved.config.bridge.listen, route, &relative).await;
    match explain::explain(&resolved, configured, node_path, &clients, answer).await {
        Ok(e) if json => {
            println!("{}", serde_json::to_string_pretty(&e).expect("JSON"));
            ExitCode::SUCCESS
        }
        Ok(e) => {
            print!("{}", explain::render_text(&e));
            if !e.instance_answered {
                println!(
                    "(no instance answered at {}: its queue is not shown)",
                    resolved.config.bridge.listen
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zkbridge explain: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// What the instance at `listen` holds for the path (`GET /explain/...`),
/// or `None` when none answers within a few seconds.
async fn ask_instance(listen: &str, route: &str, relative: &str) -> Option<Vec<QueueReport>> {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let mut addr: std::net::SocketAddr = listen.parse().ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut uri = format!("/explain/{}", utf8_percent_encode(route, NON_ALPHANUMERIC));
    for segment in relative.split('/').filter(|s| !s.is_empty()) {
        uri.push('/');
        uri.extend(utf8_percent_encode(segment, NON_ALPHANUMERIC));
    }
    let body = tokio::time::timeout(Duration::from_secs(3), get(addr, &uri))
        .await
        .ok()??;
    serde_json::from_str(&body).ok()
}

async fn get(addr: std::net::SocketAddr, uri: &str) -> Option<String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    let request = hyper::Request::get(uri)
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = response.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(body.to_vec()).ok()
}
