//! Accepting connections for the gRPC and HTTP front-ends, in plaintext or
//! TLS, the same way for both: an accept task takes TCP connections, sets
//! `TCP_NODELAY`, runs each TLS handshake in its own task (bounded by a
//! timeout, so a client that connects and says nothing holds nothing but its
//! socket, and never the accept loop), and hands finished connections to the
//! server through a channel. Each connection carries its [`Peer`]: the remote
//! address, and the names of a verified client certificate (mTLS), read once
//! per connection.
//!
//! - [`tls`]: the `[tls]` settings, the certificate material and its reload.

pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use tls::{Alpn, ClientAuth, TlsServer, TlsSettings};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The subject CN, DNS and URI names of the client certificate the TLS
    /// handshake verified; empty without one.
    pub cert_names: Arc<[Box<str>]>,
}

impl Peer {
    /// A peer without a client certificate.
    pub(crate) fn plain(addr: SocketAddr) -> Self {
        Self { addr, cert_names: Arc::from([]) }
    }
}

/// An accepted connection, plaintext or TLS.
#[derive(Debug)]
pub struct Conn {
    io: Io,
    peer: Peer,
}

#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections of one port, as they finish their handshakes.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<Conn>,
    local: SocketAddr,
}

/// Starts accepting on `listener` until `stop`: TLS with `tls`'s material
/// for `alpn` when given, plaintext otherwise.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
    alpn: Alpn,
    stop: CancellationToken,
) -> io::Result<Incoming> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(128);
    tokio::spawn(accept_loop(listener, tls, alpn, tx, stop));
    Ok(Incoming { rx, local })
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
    alpn: Alpn,
    tx: mpsc::Sender<Conn>,
    stop: CancellationToken,
) {
    loop {
        let (tcp, addr) = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: the socket is
                    // fine, so back off a little and go on (as hyper does).
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &tls else {
            if tx.send(Conn { io: Io::Plain(tcp), peer: Peer::plain(addr) }).await.is_err() {
                return;
            }
            continue;
        };
        let (tls, tx) = (tls.clone(), tx.clone());
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config(alpn));
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let cert_names = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| tls::cert_names(cert.as_ref()))
                        .unwrap_or_default();
                    let conn =
                        Conn { io: Io::Tls(Box::new(stream)), peer: Peer { addr, cert_names: cert_names.into() } };
                    let _ = tx.send(conn).await;
                }
                Ok(Err(e)) => {
                    tls.metrics.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    debug!(peer = %addr, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    tls.metrics.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    debug!(peer = %addr, "TLS handshake timed out");
                }
            }
        });
    }
}

impl Incoming {
    /// The next connection; pending forever once the port stopped (the
    /// server's own shutdown signal ends it).
    pub async fn next(&mut self) -> Conn {
        match self.rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    /// The connections as a stream, for tonic.
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = io::Result<Conn>> + Send + 'static {
        use tokio_stream::StreamExt as _;
        tokio_stream::wrappers::ReceiverStream::new(self.rx).map(Ok::<Conn, io::Error>)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        let conn = self.next().await;
        let peer = conn.peer.clone();
        (conn, peer)
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer::plain(self.local))
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Incoming>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Incoming>) -> Self {
        stream.remote_addr().clone()
    }
}
