//! The server's side of a client connection, shaped so that a reply leaves in one write.
//!
//! The HTTP/2 layer copies a DATA frame's payload into its write buffer only below a threshold
//! (256 bytes on a socket that takes vectored writes, 1 KiB on one that does not); a larger
//! payload is queued by reference and must be written out before the next frame is encoded, so
//! the trailers that end every gRPC reply went out in a write of their own. Declaring the socket
//! unvectored raises the threshold, and a write buffer in front of it gathers the pieces of a
//! larger reply, so that a BatchAuthorize reply of a hundred checks (about 1 KB) costs one write
//! instead of two.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes gathered between flushes: room for two full 16 KiB DATA frames, which the HTTP/2 layer
/// hands over in two pieces each on an unvectored socket, so a large reply's pieces are joined
/// rather than each written on its own.
const WRITE_BUFFER: usize = 32 * 1024;

/// A client connection with a write buffer, flushed whenever the HTTP/2 layer flushes.
#[derive(Debug)]
pub struct Coalesced {
    inner: BufWriter<TcpStream>,
}

impl Coalesced {
    /// Wraps an accepted connection.
    pub fn new(stream: TcpStream) -> Self {
        Self { inner: BufWriter::with_capacity(WRITE_BUFFER, stream) }
    }
}

impl AsyncRead for Coalesced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalesced {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // See the module comment: this is what makes the HTTP/2 layer copy replies up to 1 KiB.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl Connected for Coalesced {
    // The plain TCP information, so that TLS client certificates are found where tonic looks.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.get_ref().connect_info()
    }
}
