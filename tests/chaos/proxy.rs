//! A TCP proxy in front of PostgreSQL that the test controls: the replicas connect to its
//! port, and it can cut the network three ways and restore it.
//!
//! - `Refuse`: open connections are reset, new ones are reset at once (a host that is gone);
//! - `Blackhole`: nothing goes through either way: open connections stall, new ones hang
//!   (packets dropped); on restore they carry on where they stopped, no byte lost;
//! - `Reset`: open connections are reset once (a NAT or firewall flushing its table); new
//!   ones go through.
//!
//! A connection's bytes are only ever held back, never dropped: reads are cancel-safe, and a
//! read chunk is always written out before the mode is looked at again.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::plan::CutMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Refuse,
    Blackhole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    mode: Mode,
    /// Bumped by every reset (and refuse): connections opened before are cut.
    resets: u64,
}

pub struct Proxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    stop: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Proxy {
    /// Listens on a random loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (state, _) = watch::channel(State {
            mode: Mode::Pass,
            resets: 0,
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, upstream, state.clone(), stop.clone()));
        Ok(Self { addr, state, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn cut(&self, how: CutMode) {
        self.state.send_modify(|s| match how {
            CutMode::Refuse => {
                s.mode = Mode::Refuse;
                s.resets += 1;
            }
            CutMode::Blackhole => s.mode = Mode::Blackhole,
            CutMode::Reset => s.resets += 1,
        });
    }

    pub fn restore(&self) {
        self.state.send_modify(|s| s.mode = Mode::Pass);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: watch::Sender<State>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else { continue };
        let watch = state.subscribe();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = serve(client, upstream, watch) => {}
            }
        });
    }
}

/// One client connection, from accept to close.
async fn serve(client: TcpStream, upstream: SocketAddr, mut watch: watch::Receiver<State>) {
    let born = watch.borrow().resets;
    // A new connection waits out a blackhole (as an unanswered SYN would), is reset when
    // refused, and is connected upstream when the network passes.
    loop {
        let state = *watch.borrow_and_update();
        match state.mode {
            Mode::Pass => break,
            Mode::Refuse => return reset(&client),
            Mode::Blackhole => {
                if watch.changed().await.is_err() {
                    return;
                }
            }
        }
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return reset(&client);
    };
    let (mut client, mut server) = (client, server);
    let cut = {
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let up = pump(&mut client_read, &mut server_write, watch.clone(), born);
        let down = pump(&mut server_read, &mut client_write, watch.clone(), born);
        tokio::select! {
            cut = up => cut,
            cut = down => cut,
        }
    };
    if cut {
        reset(&client);
        reset(&server);
    }
    let _ = client.shutdown().await;
    let _ = server.shutdown().await;
}

/// Copies one direction until EOF or an error (false) or a cut (true).
async fn pump(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut watch: watch::Receiver<State>,
    born: u64,
) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match passable(&mut watch, born).await {
            Gate::Pass => {}
            Gate::Cut => return true,
            Gate::Closed => return false,
        }
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            changed = watch.changed() => {
                if changed.is_err() {
                    return false;
                }
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        // A chunk read is held through a blackhole and dropped only by a cut.
        match passable(&mut watch, born).await {
            Gate::Pass => {}
            Gate::Cut => return true,
            Gate::Closed => return false,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
    }
}

enum Gate {
    Pass,
    Cut,
    Closed,
}

/// Waits while the network is blackholed; Cut once this connection has been cut.
async fn passable(watch: &mut watch::Receiver<State>, born: u64) -> Gate {
    loop {
        let state = *watch.borrow_and_update();
        if state.resets != born || state.mode == Mode::Refuse {
            return Gate::Cut;
        }
        if state.mode == Mode::Pass {
            return Gate::Pass;
        }
        if watch.changed().await.is_err() {
            return Gate::Closed;
        }
    }
}

/// Closes with a reset (RST) instead of an orderly FIN, where the socket allows it.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An echo server on loopback.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, text: &[u8]) -> io::Result<Vec<u8>> {
        s.write_all(text).await?;
        let mut back = vec![0u8; text.len()];
        s.read_exact(&mut back).await?;
        Ok(back)
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn bytes_pass_and_a_blackhole_holds_them_back_until_restored() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"one").await.unwrap(), b"one");

        proxy.cut(CutMode::Blackhole);
        s.write_all(b"two").await.unwrap();
        let mut back = [0u8; 3];
        let stalled = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut back));
        assert!(stalled.await.is_err(), "bytes went through a blackhole");

        proxy.restore();
        tokio::time::timeout(WAIT, s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back, b"two");
    }

    #[tokio::test]
    async fn a_reset_cuts_open_connections_and_lets_new_ones_through() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let mut old = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut old, b"hi").await.unwrap(), b"hi");

        proxy.cut(CutMode::Reset);

        let cut = tokio::time::timeout(WAIT, round_trip(&mut old, b"again")).await;
        assert!(
            matches!(cut, Ok(Err(_))),
            "the old connection survived: {cut:?}"
        );
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut new, b"new").await.unwrap(), b"new");
    }

    #[tokio::test]
    async fn refused_connections_fail_until_restored() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        proxy.cut(CutMode::Refuse);

        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        let failed = tokio::time::timeout(WAIT, round_trip(&mut refused, b"x")).await;
        assert!(matches!(failed, Ok(Err(_))), "went through: {failed:?}");

        proxy.restore();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"back").await.unwrap(), b"back");
    }
}
