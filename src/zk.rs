//! One ZooKeeper session per ensemble, kept alive for the life of the bridge.
//!
//! The client reconnects by itself while its session lives, but once the
//! session expires nothing reconnects: a new `Client` must be built. The
//! supervisor here does that, and publishes each session as a new
//! *generation* so that users can tell "the same session, reconnected" (watches
//! survive, events may be lost) from "a new session" (watches must be re-armed).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};
use zookeeper_client::{Acl, AddWatchMode, Client, PersistentWatcher, SessionState};

use anyhow::Context;
use zookeeper_client::{SaslOptions, TlsOptions};

use crate::config::{read_digest_file, read_secret_file, EnsembleConfig, TlsConfig};
use crate::metrics::Metrics;
use crate::record_writer::RecordWriter;
use crate::shutdown::Shutdown;

/// A live session, tagged with the generation it belongs to.
#[derive(Clone)]
pub struct Session {
    pub client: Client,
    pub generation: u64,
}

/// Handle on an ensemble's current session. Cheap to clone.
#[derive(Clone)]
pub struct Ensemble {
    pub name: String,
    /// ACL of every node zkbridge creates here (`[ensembles.X] acl`).
    pub acl: Arc<Vec<Acl>>,
    /// The largest request the servers accept (`max_request_bytes`).
    pub max_request_bytes: usize,
    current: watch::Receiver<Option<Session>>,
    publish: Arc<watch::Sender<Option<Session>>>,
    /// Whether the session is connected now (owned by the supervisor).
    connected: watch::Receiver<bool>,
    supervisor: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    records: RecordWriter,
}

impl Ensemble {
    /// Starts the session supervisor. Returns at once; the first session is
    /// published as soon as the ensemble answers.
    pub fn start(name: &str, config: &EnsembleConfig, metrics: Arc<Metrics>, shutdown: Shutdown) -> Self {
        let (tx, rx) = watch::channel(None);
        let publish = Arc::new(tx);
        let (connected_tx, connected) = watch::channel(false);
        let supervisor = Supervisor {
            name: name.to_string(),
            config: config.clone(),
            metrics,
            publish: publish.clone(),
            connected: connected_tx,
        };
        let handle = tokio::spawn(supervisor.run(shutdown));
        Ensemble {
            name: name.to_string(),
            acl: Arc::new(config.acl()),
            max_request_bytes: config.max_request_bytes,
            current: rx,
            publish,
            connected,
            supervisor: Arc::new(std::sync::Mutex::new(Some(handle))),
            records: RecordWriter::start(config.acl()),
        }
    }

    /// Writes one of zkbridge's periodic records (a route's heartbeat, a
    /// route/target's progress) as JSON on `client`'s session, in a `multi`
    /// with the others waiting in this ensemble (see `record_writer`);
    /// creates the node when missing. Returns the write's zxid.
    pub async fn put_record(
        &self,
        client: &Client,
        path: &str,
        value: &impl serde::Serialize,
    ) -> Result<i64, zookeeper_client::Error> {
        self.records.put_json(client, path, value).await
    }

    /// Closes the session once every user is done with it (after shutdown),
    /// so that the server deletes its ephemeral nodes (leases, standby
    /// contenders, registrations) at once rather than at session timeout.
    pub async fn close(&self) {
        self.publish.send_replace(None);
        let handle = self.supervisor.lock().unwrap().take();
        if let Some(handle) = handle {
            let _ = tokio::time::timeout(Duration::from_secs(3), handle).await;
        }
    }

    /// Whether a session is connected now (not merely open: a session
    /// whose connection is lost stays open until it expires).
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// The current session, waiting for one if the ensemble is unreachable.
    pub async fn session(&self) -> Session {
        self.session_after(0).await
    }

    /// A session of a generation newer than `generation`: used after an
    /// operation failed with `SessionExpired` on that generation.
    pub async fn session_after(&self, generation: u64) -> Session {
        let mut rx = self.current.clone();
        loop {
            if let Some(s) = rx.borrow_and_update().as_ref() {
                if s.generation > generation {
                    return s.clone();
                }
            }
            if rx.changed().await.is_err() {
                // Supervisor gone (shutdown): nothing newer will come.
                std::future::pending::<()>().await;
            }
        }
    }
}

struct Supervisor {
    name: String,
    config: EnsembleConfig,
    metrics: Arc<Metrics>,
    publish: Arc<watch::Sender<Option<Session>>>,
    connected: watch::Sender<bool>,
}

impl Supervisor {
    /// The session's connection came or went: for `/readyz` and the
    /// `session_state` gauge (which is only ever written).
    fn set_connected(&self, connected: bool, gauge: &prometheus::IntGauge) {
        gauge.set(connected as i64);
        self.connected.send_replace(connected);
    }

    async fn run(self, mut shutdown: Shutdown) {
        let state_gauge = self.metrics.session_state.with_label_values(&[&self.name]);
        let state_gauge = &state_gauge;
        let mut generation = 0u64;
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            if shutdown.is_requested() {
                break;
            }
            let client = tokio::select! {
                c = connect(&self.config) => c,
                _ = shutdown.requested() => break,
            };
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    let reason = failure_reason(&e);
                    self.metrics
                        .session_failures
                        .with_label_values(&[&self.name, reason])
                        .inc();
                    warn!(ensemble = %self.name, reason, error = %e, "cannot establish ZooKeeper session; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {},
                        _ = shutdown.requested() => break,
                    }
                    continue;
                }
            };
            backoff.reset();
            generation += 1;
            info!(ensemble = %self.name, session = %client.session_id(), generation, "ZooKeeper session established");
            self.set_connected(true, state_gauge);
            let mut states = client.state_watcher();
            self.publish.send_replace(Some(Session {
                client: client.clone(),
                generation,
            }));
            drop(client);
            let terminal = loop {
                let state = tokio::select! {
                    s = states.changed() => s,
                    _ = shutdown.requested() => {
                        // Workers stopping still use the session to hand
                        // their leases back; `Ensemble::close` drops it
                        // afterwards, and the client then closes it with
                        // the server.
                        loop {
                            if states.changed().await.is_terminated() {
                                break;
                            }
                        }
                        self.set_connected(false, state_gauge);
                        return;
                    }
                };
                self.set_connected(
                    matches!(state, SessionState::SyncConnected | SessionState::ConnectedReadOnly),
                    state_gauge,
                );
                match state {
                    SessionState::Disconnected => {
                        warn!(ensemble = %self.name, "ZooKeeper connection lost; reconnecting")
                    }
                    SessionState::SyncConnected => info!(ensemble = %self.name, "ZooKeeper connection restored"),
                    s if s.is_terminated() => break s,
                    _ => {}
                }
            };
            self.set_connected(false, state_gauge);
            self.publish.send_replace(None);
            if terminal == SessionState::Expired {
                self.metrics.session_expirations.with_label_values(&[&self.name]).inc();
                warn!(ensemble = %self.name, generation, "ZooKeeper session expired; opening a new one");
            } else {
                warn!(ensemble = %self.name, state = ?terminal, "ZooKeeper session ended; opening a new one");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {},
                    _ = shutdown.requested() => break,
                }
            }
        }
        self.set_connected(false, state_gauge);
        self.publish.send_replace(None);
    }
}

/// What a session event on a watcher means to whoever holds the watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionChange {
    /// The connection dropped: events may be lost until it is back.
    Lost,
    /// Connected again after a loss: whatever changed meanwhile sent no
    /// event (the server drops them), so the holder rescans or re-arms.
    Back,
    /// The session is over: the watcher will say nothing more.
    Ended,
    /// Nothing that changes what the holder must do.
    Nothing,
}

/// One watcher's session across its events; the capture and the worker's
/// target watch read session events through it, so both follow one rule.
#[derive(Debug, Default)]
pub struct SessionTracker {
    away: bool,
}

impl SessionTracker {
    pub fn on(&mut self, state: zookeeper_client::SessionState) -> SessionChange {
        use zookeeper_client::SessionState as S;
        match state {
            s if s.is_terminated() => SessionChange::Ended,
            S::Disconnected => {
                self.away = true;
                SessionChange::Lost
            }
            S::SyncConnected | S::ConnectedReadOnly if self.away => {
                self.away = false;
                SessionChange::Back
            }
            _ => SessionChange::Nothing,
        }
    }
}

/// Arms (or re-arms) a persistent recursive watch on `path`.
///
/// Re-armed after every reconnect of the same session, and the subtree
/// rescanned: the vendored client re-sends persistent watches on reconnect
/// (see `vendor/zookeeper-client/PATCHES.md`), but the server drops the
/// events of changes made while the client was disconnected. `AddWatch` on
/// a live connection is idempotent on the server; the caller drops the old
/// watcher afterwards.
pub async fn watch_subtree(client: &Client, path: &str) -> Result<PersistentWatcher, zookeeper_client::Error> {
    client.watch(path, AddWatchMode::PersistentRecursive).await
}

/// Why a session could not be opened, as the `reason` label of
/// `zkbridge_session_failures_total`: wrong credentials and TLS problems
/// need an operator; unreachable servers may heal by themselves.
fn failure_reason(error: &anyhow::Error) -> &'static str {
    use zookeeper_client::Error as E;
    match error.downcast_ref::<E>() {
        Some(E::AuthFailed) => "auth",
        Some(E::Timeout | E::NoHosts | E::ConnectionLoss) => "unreachable",
        _ if error.to_string().starts_with("TLS") => "tls",
        _ => "other",
    }
}

/// Opens a session with the ensemble's settings: timeout, digest or SASL
/// authentication, TLS.
pub async fn connect(config: &EnsembleConfig) -> anyhow::Result<Client> {
    let mut connector = Client::connector().with_session_timeout(Duration::from_millis(config.session_timeout_ms));
    let digest = match (&config.digest, &config.digest_file) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(file)) => Some(read_digest_file(file, "digest_file")?),
        _ => None,
    };
    if let Some(d) = digest {
        connector = connector.with_auth("digest", d.expose().as_bytes());
    }
    if let Some(sasl) = &config.sasl {
        let password = match (&sasl.password, &sasl.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(file)) => read_secret_file(file, "sasl.password_file")?,
            (None, None) => anyhow::bail!("sasl: no password"),
        };
        connector = connector.with_sasl(SaslOptions::digest_md5(
            sasl.username.clone(),
            password.expose().to_string(),
        ));
    }
    let Some(tls) = &config.tls else {
        return Ok(connector.connect(&config.connect).await?);
    };
    connector = connector.with_tls(tls_options(tls)?);
    // The client retries a failed handshake as a lost connection and ends
    // in a time-out. A handshake of our own, alongside, says why at once.
    let connecting = connector.secure_connect(&config.connect);
    let probe = diagnose_tls(tls, &config.connect);
    tokio::pin!(connecting, probe);
    tokio::select! {
        client = &mut connecting => Ok(client?),
        failure = &mut probe => match failure {
            // Another server of the ensemble may still be fine: give the
            // client a moment before naming the failure.
            Some(reason) => match tokio::time::timeout(Duration::from_secs(2), connecting).await {
                Ok(Ok(client)) => Ok(client),
                _ => anyhow::bail!("TLS: {reason}"),
            },
            None => Ok(connecting.await?),
        },
    }
}

fn tls_options(tls: &TlsConfig) -> anyhow::Result<TlsOptions> {
    let read = |path: &str| std::fs::read_to_string(path).with_context(|| format!("tls: reading {path}"));
    let mut options = TlsOptions::new()
        .with_pem_ca(&read(&tls.ca)?)
        .with_context(|| format!("tls.ca {}", tls.ca))?;
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        options = options
            .with_pem_identity(&read(cert)?, &read(key)?)
            .with_context(|| format!("tls.cert {cert} / tls.key {key}"))?;
    }
    if !tls.verify_hostname {
        // SAFETY (of intent): the operator turned hostname checks off for
        // servers whose certificates do not name them; the CA still applies.
        options = unsafe { options.with_no_hostname_verification() };
    }
    Ok(options)
}

/// Handshakes with the first server of `connect` the way the client would
/// and returns why it failed, if it did: an unknown CA, a name mismatch, a
/// server that wants a client certificate, a port that does not speak TLS.
async fn diagnose_tls(tls: &TlsConfig, connect: &str) -> Option<String> {
    let tls = tls.clone();
    let host_port = connect.split('/').next()?.split(',').next()?.trim();
    let host_port = host_port.strip_prefix("tcp+tls://").unwrap_or(host_port).to_string();
    tokio::task::spawn_blocking(move || handshake(&tls, &host_port).err())
        .await
        .ok()
        .flatten()
}

fn handshake(tls: &TlsConfig, host_port: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    use std::sync::Arc;

    use rustls::pki_types::ServerName;

    let (host, _) = host_port.rsplit_once(':').ok_or("no port in connect string")?;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&tls.ca).map_err(|e| e.to_string())?;
    for cert in rustls_pemfile::certs(&mut ca.as_slice()).flatten() {
        roots.add(cert).map_err(|e| format!("tls.ca {}: {e}", tls.ca))?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let cert = std::fs::read(cert).map_err(|e| e.to_string())?;
            let key = std::fs::read(key).map_err(|e| e.to_string())?;
            let chain = rustls_pemfile::certs(&mut cert.as_slice()).flatten().collect();
            let key = rustls_pemfile::private_key(&mut key.as_slice())
                .ok()
                .flatten()
                .ok_or("tls.key holds no private key")?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
        }
        _ => builder.with_no_client_auth(),
    };
    config.enable_sni = true;
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let addr = host_port
        .to_socket_addrs()
        .map_err(|e| format!("{host_port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host_port}: no address"))?;
    let Ok(mut sock) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) else {
        // Unreachable is not a TLS problem: the caller's error stands.
        return Ok(());
    };
    // A server that refuses our certificate says so right after the
    // handshake (TLS 1.3 reports it on the first read); one that accepts it
    // waits for a request, and the read times out.
    sock.set_read_timeout(Some(Duration::from_secs(3))).ok();
    let mut stream = rustls::Stream::new(&mut conn, &mut sock);
    let outcome = stream
        .write_all(&[0, 0, 0, 0])
        .and_then(|_| stream.read(&mut [0u8; 1]).map(drop));
    let quiet = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::UnexpectedEof
        )
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(e) if quiet(&e) && conn.is_handshaking() => Err(format!(
            "handshake with {host_port} failed: no TLS answer ({e}); is it the server's secureClientPort?"
        )),
        Err(e) if quiet(&e) => Ok(()),
        // A name mismatch is what the operator asked to ignore; the CA and
        // the client certificate are still judged.
        Err(e)
            if !tls.verify_hostname && {
                let text = e.to_string();
                text.contains("NotValidForName") || text.contains("not valid for name")
            } =>
        {
            Ok(())
        }
        Err(e) => {
            let hint = match (&tls.cert, e.to_string()) {
                (None, alert) if alert.contains("BadCertificate") || alert.contains("CertificateRequired") => {
                    " (the server wants a client certificate: set tls.cert and tls.key)"
                }
                _ => "",
            };
            Err(format!("handshake with {host_port} failed: {e}{hint}"))
        }
    }
}

/// Whether an error is worth retrying on the same or a new session, as
/// opposed to a property of the node or request that will not change by itself.
pub fn is_transient(error: &zookeeper_client::Error) -> bool {
    use zookeeper_client::Error as E;
    !matches!(
        error,
        E::NoAuth
            | E::InvalidAcl
            | E::BadArguments(_)
            | E::MarshallingError
            | E::NoChildrenForEphemerals
            | E::QuotaExceeded
            | E::Unimplemented
            | E::AuthFailed
    )
}

/// A short, stable name for an error, used as the `kind` label of
/// `zkbridge_errors_total` (bounded: one per ZooKeeper error code).
pub fn error_kind(error: &zookeeper_client::Error) -> &'static str {
    use zookeeper_client::Error as E;
    match error {
        E::NoNode => "no_node",
        E::NoAuth => "no_auth",
        E::BadVersion => "bad_version",
        E::NodeExists => "node_exists",
        E::NotEmpty => "not_empty",
        E::SessionExpired => "session_expired",
        E::ConnectionLoss => "connection_loss",
        E::Timeout => "timeout",
        E::MarshallingError => "marshalling",
        E::InvalidAcl => "invalid_acl",
        E::AuthFailed => "auth_failed",
        E::QuotaExceeded => "quota_exceeded",
        E::Throttled => "throttled",
        E::ClientClosed => "client_closed",
        E::NoChildrenForEphemerals => "no_children_for_ephemerals",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_is_back_only_after_it_was_lost() {
        use zookeeper_client::SessionState as S;
        let mut t = SessionTracker::default();
        assert_eq!(
            t.on(S::SyncConnected),
            SessionChange::Nothing,
            "connected from the start"
        );
        assert_eq!(t.on(S::Disconnected), SessionChange::Lost);
        assert_eq!(t.on(S::Disconnected), SessionChange::Lost);
        assert_eq!(
            t.on(S::ConnectedReadOnly),
            SessionChange::Back,
            "a read-only server is back too"
        );
        assert_eq!(t.on(S::SyncConnected), SessionChange::Nothing, "once");
        assert_eq!(t.on(S::Expired), SessionChange::Ended);
        assert_eq!(t.on(S::Closed), SessionChange::Ended);
    }
}
