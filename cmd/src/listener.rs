//! Connection admission for both listeners: a cap on open connections (one
//! over the cap is closed at once and counted), a deadline for a new
//! connection's first bytes, and the accept loop that survives running out
//! of file descriptors.
//!
//! Without these, idle sockets that never send a request hold a descriptor
//! each until the process runs out, and the next file RocksDB opens fails.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Sleep;

/// How long the accept loop pauses after a failed accept (EMFILE, ENFILE,
/// ENOBUFS): the error repeats at once otherwise, spinning a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// A connection that has not sent its first request (HTTP: the whole
    /// header block; gRPC: any byte of the HTTP/2 preface) within this is
    /// closed.
    pub first_bytes_timeout: Duration,
}

/// Open and rejected connections per listener.
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    open: IntGaugeVec,
    rejected: IntCounterVec,
}

impl ConnectionMetrics {
    /// Registers `engram_connections{server}` and
    /// `engram_connections_rejected_total{server,reason}`.
    pub fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let open = IntGaugeVec::new(
            Opts::new("engram_connections", "Open client connections per listener"),
            &["server"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "engram_connections_rejected_total",
                "Client connections closed by admission: limit (over server.max_connections / server.grpc_max_connections), accept_error (the accept itself failed, e.g. out of file descriptors)",
            ),
            &["server", "reason"],
        )?;
        for server in ["http", "grpc"] {
            open.with_label_values(&[server]);
            for reason in ["limit", "accept_error"] {
                rejected.with_label_values(&[server, reason]);
            }
        }
        r.register(Box::new(open.clone()))?;
        r.register(Box::new(rejected.clone()))?;
        Ok(Self { open, rejected })
    }
}

/// Admits connections of one listener.
#[derive(Debug, Clone)]
struct Admission {
    server: &'static str,
    slots: Arc<Semaphore>,
    metrics: ConnectionMetrics,
}

impl Admission {
    fn new(server: &'static str, limits: Limits, metrics: ConnectionMetrics) -> Self {
        Self {
            server,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            metrics,
        }
    }

    /// A slot for a new connection, or `None` (counted) when all are taken.
    fn admit(&self) -> Option<Slot> {
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => {
                self.metrics.open.with_label_values(&[self.server]).inc();
                Some(Slot {
                    _permit: permit,
                    open: self.metrics.open.clone(),
                    server: self.server,
                })
            }
            Err(_) => {
                self.metrics
                    .rejected
                    .with_label_values(&[self.server, "limit"])
                    .inc();
                None
            }
        }
    }

    fn accept_failed(&self, e: &io::Error) {
        self.metrics
            .rejected
            .with_label_values(&[self.server, "accept_error"])
            .inc();
        tracing::warn!(server = self.server, error = %e, "accepting a connection failed; pausing accepts briefly");
    }
}

/// A connection's place under the cap, released when the connection ends.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: IntGaugeVec,
    server: &'static str,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.with_label_values(&[self.server]).dec();
    }
}

/// Serves `router` on `listener` until `close` turns true, then stops
/// accepting and waits for the open connections to finish their requests
/// (the caller bounds that wait).
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: ConnectionMetrics,
    mut close: watch::Receiver<bool>,
) -> io::Result<()> {
    // The watch guard `wait_for` returns is not Send: drop it inside.
    let closing = async move {
        let _ = close.wait_for(|c| *c).await;
    };
    tokio::pin!(closing);
    let admission = Admission::new("http", limits, metrics);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.first_bytes_timeout);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    admission.accept_failed(&e);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut closing => break,
        };
        let Some(slot) = admission.admit() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |req| {
            let mut router = router.clone();
            async move { tower::Service::call(&mut router, req).await }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are the client's (reset, timeout, bad request line).
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The gRPC listener's connections under the cap, as tonic's incoming
/// stream (tonic owns the HTTP/2 side; this owns admission).
pub struct GrpcIncoming {
    listener: TcpListener,
    admission: Admission,
    first_bytes_timeout: Duration,
    backoff: Option<Pin<Box<Sleep>>>,
}

impl GrpcIncoming {
    /// Admits connections of `listener` under `limits`.
    pub fn new(listener: TcpListener, limits: Limits, metrics: ConnectionMetrics) -> Self {
        Self {
            listener,
            admission: Admission::new("grpc", limits, metrics),
            first_bytes_timeout: limits.first_bytes_timeout,
            backoff: None,
        }
    }
}

impl tokio_stream::Stream for GrpcIncoming {
    type Item = io::Result<Admitted>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.backoff.as_mut() {
                if b.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.backoff = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.admission.accept_failed(&e);
                    this.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
                Poll::Ready(Ok((stream, _))) => {
                    let Some(slot) = this.admission.admit() else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    return Poll::Ready(Some(Ok(Admitted {
                        stream,
                        _slot: slot,
                        first_bytes: Some(Box::pin(tokio::time::sleep(this.first_bytes_timeout))),
                        awaited: OPENING_BYTES,
                    })));
                }
            }
        }
    }
}

/// Bytes a gRPC client sends first: the HTTP/2 connection preface (24)
/// and the header of its SETTINGS frame (9).
const OPENING_BYTES: usize = 33;

/// An admitted gRPC connection: holds its slot, and fails its reads if the
/// client has not sent the opening of an HTTP/2 connection (preface and
/// SETTINGS frame header, [`OPENING_BYTES`]) by the first-bytes deadline:
/// a byte now and then does not keep a connection open.
pub struct Admitted {
    stream: TcpStream,
    _slot: Slot,
    first_bytes: Option<Pin<Box<Sleep>>>,
    /// Opening bytes still to come before the deadline is disarmed.
    awaited: usize,
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let got = buf.filled().len() - before;
                if self.first_bytes.is_some() && got > 0 {
                    self.awaited = self.awaited.saturating_sub(got);
                    if self.awaited == 0 {
                        self.first_bytes = None;
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = self
                    .first_bytes
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not open an HTTP/2 connection before the first-bytes deadline",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// Descriptors kept free for storage (RocksDB's open files, WAL segments,
/// snapshots, backups) when sizing the connection caps.
pub fn storage_reserve(rocksdb_max_open_files: usize) -> usize {
    rocksdb_max_open_files + 512
}

/// The caps actually used: the configured ones, lowered proportionally
/// when together with the storage reserve they exceed the process's
/// open-files limit (`nofile`, 0 when unknown: unchanged).
pub fn fit_to_descriptors(http: usize, grpc: usize, reserve: usize, nofile: u64) -> (usize, usize) {
    let Ok(nofile) = usize::try_from(nofile) else {
        return (http, grpc);
    };
    if nofile == 0 || http + grpc + reserve <= nofile {
        return (http, grpc);
    }
    let room = nofile.saturating_sub(reserve).max(2);
    let total = (http + grpc).max(1);
    let h = (room * http / total).max(1);
    let g = (room * grpc / total).max(1);
    (h, g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_caps_leave_the_storage_reserve_free() {
        // Enough descriptors: the configured caps stand.
        assert_eq!(fit_to_descriptors(100, 50, 1000, 20_000), (100, 50));
        // Too few: both shrink, in proportion, under nofile - reserve.
        let (h, g) = fit_to_descriptors(10_000, 10_000, 4_608, 20_000);
        assert!(h + g + 4_608 <= 20_000, "{h} + {g}");
        assert_eq!(h, g);
        // Pathological limits still leave one connection each.
        assert_eq!(fit_to_descriptors(10, 10, 5_000, 1_024), (1, 1));
        // Unknown limit: unchanged.
        assert_eq!(fit_to_descriptors(7, 8, 9, 0), (7, 8));
    }
}
