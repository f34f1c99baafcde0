//! The simulator's accept loop, whose connections a handler can kill, so it can close a
//! connection without answering (the `drop` script answer): the handler flips the
//! connection's switch, and the response write then fails, so hyper drops the
//! socket before a single byte of the answer is sent.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;

/// Concurrent HTTP/2 streams one client connection may hold open. hyper's default is
/// 200; the simulator stands in for a vendor whose own limit is unknown, so it lets a
/// worker with `worker.max_in_flight` up to this many use one connection.
pub const H2_MAX_STREAMS: u32 = 10_000;

pub struct KillableStream {
    inner: TcpStream,
    killed: Arc<AtomicBool>,
}

/// The per-connection kill switch, handed to handlers as connect info. Over HTTP/2
/// it drops the whole connection, every stream on it (as a vendor's crash would).
#[derive(Clone, Debug)]
pub struct KillSwitch(Arc<AtomicBool>);

impl KillSwitch {
    pub fn kill(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Serves `router` on `listener` until `cancel` fires, then lets every open
/// connection finish its requests in progress and returns. HTTP/1.1, and HTTP/2
/// without TLS when a client starts with its preface (prior knowledge). axum::serve
/// does the same but cannot set HTTP/2's stream limit.
pub async fn serve(listener: TcpListener, router: Router, cancel: CancellationToken) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(H2_MAX_STREAMS);
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let inner = match accepted {
            Ok((inner, _)) => inner,
            // Out of file descriptors and the like: back off briefly, as axum does.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // Small request/response pairs: do not wait for Nagle.
        let _ = inner.set_nodelay(true);
        let killed = Arc::new(AtomicBool::new(false));
        let switch = ConnectInfo(KillSwitch(killed.clone()));
        let io = TokioIo::new(KillableStream { inner, killed });
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(switch.clone());
            router.clone().call(request)
        });
        let builder = builder.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

fn killed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection dropped by the scenario",
    )
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed.load(Ordering::Acquire) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed.load(Ordering::Acquire) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.killed.load(Ordering::Acquire) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
