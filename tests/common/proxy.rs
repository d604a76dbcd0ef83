//! A fault-injecting TCP proxy between zkbridge and a ZooKeeper server:
//! it passes traffic, delays it (order kept, so pipelined traffic is not
//! slowed, only round trips), blackholes it (connections stay open and
//! stall, as TCP does in a partition: nothing arrives until it heals, then
//! what was sent arrives, if the ends have not given up), or resets every
//! connection and refuses new ones.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Delay(Duration),
    Blackhole,
    Reset,
}

/// One proxy: `addr` forwards to the upstream given at start. Runs on the
/// current tokio runtime until dropped.
pub struct FaultProxy {
    pub addr: String,
    mode: Arc<watch::Sender<Fault>>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: String) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, _) = watch::channel(Fault::Pass);
        let mode = Arc::new(tx);
        let accepting = mode.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let fault = *accepting.borrow();
                if fault == Fault::Reset {
                    reset_on_drop(&client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                reset_on_drop(&client);
                reset_on_drop(&server);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, accepting.subscribe()));
                tokio::spawn(pipe(sr, cw, accepting.subscribe()));
            }
        });
        FaultProxy { addr, mode, accept }
    }

    pub fn set(&self, fault: Fault) {
        self.mode.send_replace(fault);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.mode.send_replace(Fault::Reset);
    }
}

/// Copies one direction, applying the fault in force when each chunk
/// arrives. Ends (dropping both halves: a reset, with linger 0) on
/// `Fault::Reset`.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Fault>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut writer_mode = mode.clone();
    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                next = rx.recv() => {
                    let Some((due, bytes)) = next else { return };
                    tokio::time::sleep_until(due.into()).await;
                    // A partition stalls a connection; TCP delivers what
                    // was sent once it heals, unless an end gave up first.
                    if !until_not(&mut writer_mode, Fault::Blackhole).await {
                        return;
                    }
                    if to.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                _ = until_reset(&mut writer_mode) => return,
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let due = match *mode.borrow() {
                    Fault::Pass => Instant::now(),
                    Fault::Delay(d) => Instant::now() + d,
                    Fault::Blackhole => Instant::now(),
                    Fault::Reset => break,
                };
                if tx.send((due, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
            _ = until_reset(&mut mode) => break,
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Waits while the fault is `fault`; false when it turned into a reset.
async fn until_not(mode: &mut watch::Receiver<Fault>, fault: Fault) -> bool {
    loop {
        let now = *mode.borrow_and_update();
        if now == Fault::Reset {
            return false;
        }
        if now != fault {
            return true;
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

async fn until_reset(mode: &mut watch::Receiver<Fault>) {
    loop {
        if *mode.borrow_and_update() == Fault::Reset {
            return;
        }
        if mode.changed().await.is_err() {
            return;
        }
    }
}

/// Closes with a reset (RST), as a failed middlebox or a killed peer does.
/// A zero linger never blocks on drop, which is why tokio's warning about
/// lingering does not apply.
#[allow(deprecated)]
fn reset_on_drop(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

/// A proxy in front of every server of an ensemble.
pub struct FaultyEnsemble {
    pub proxies: Vec<FaultProxy>,
}

impl FaultyEnsemble {
    pub async fn start(zk: &super::Zk) -> FaultyEnsemble {
        let mut proxies = Vec::new();
        for s in &zk.servers {
            proxies.push(FaultProxy::start(format!("127.0.0.1:{}", s.port)).await);
        }
        FaultyEnsemble { proxies }
    }

    pub fn connect_string(&self) -> String {
        self.proxies
            .iter()
            .map(|p| p.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn set(&self, fault: Fault) {
        for p in &self.proxies {
            p.set(fault);
        }
    }
}
