//! The server's side of a client connection, shaped so that a reply leaves in one write.
//!
//! The HTTP/2 layer copies a DATA frame's payload into its write buffer only below a threshold
//! (256 bytes on a socket that takes vectored writes, 1 KiB on one that does not); a larger
//! payload is queued by reference and must be written out before the next frame is encoded, so
//! the trailers that end every gRPC reply went out in a write of their own. Declaring the socket
//! unvectored raises the threshold, and a write buffer in front of it gathers the pieces of a
//! larger reply, so that a BatchAuthorize reply of a hundred checks (about 1 KB) costs one write
//! instead of two.
//!
//! The buffer is allocated by the first write, not at accept: a connection that never gets as
//! far as a reply (a silent or refused peer) costs no buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes gathered between flushes: room for two full 16 KiB DATA frames, which the HTTP/2 layer
/// hands over in two pieces each on an unvectored socket, so a large reply's pieces are joined
/// rather than each written on its own.
const WRITE_BUFFER: usize = 32 * 1024;

/// A client connection with a write buffer, flushed whenever the HTTP/2 layer flushes.
#[derive(Debug)]
pub struct Coalesced<IO> {
    inner: IO,
    buffer: Vec<u8>,
    /// How much of `buffer` has been written to `inner`.
    written: usize,
}

impl<IO> Coalesced<IO> {
    /// Wraps an accepted connection.
    pub fn new(inner: IO) -> Self {
        Self { inner, buffer: Vec::new(), written: 0 }
    }
}

impl<IO: AsyncWrite + Unpin> Coalesced<IO> {
    /// Writes the buffer out to the connection.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffer[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buffer.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Coalesced<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesced<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.buffer.len() + bytes.len() > WRITE_BUFFER {
            ready!(this.poll_drain(cx))?;
        }
        if bytes.len() >= WRITE_BUFFER {
            // Too large to gather: straight through, as there is nothing ahead of it.
            return Pin::new(&mut this.inner).poll_write(cx, bytes);
        }
        if this.buffer.capacity() == 0 {
            this.buffer.reserve_exact(WRITE_BUFFER);
        }
        this.buffer.extend_from_slice(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // See the module comment: this is what makes the HTTP/2 layer copy replies up to 1 KiB.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn writes_are_gathered_until_a_flush_and_arrive_whole_and_in_order() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut coalesced = Coalesced::new(client);
        assert_eq!(coalesced.buffer.capacity(), 0, "no buffer before the first write");
        let mut expected = Vec::new();
        for (i, size) in [10usize, 1000, 40_000, 5, 31_000, 2000].into_iter().enumerate() {
            let chunk = vec![i as u8; size];
            coalesced.write_all(&chunk).await.unwrap();
            expected.extend_from_slice(&chunk);
        }
        coalesced.flush().await.unwrap();
        drop(coalesced);
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, expected);
    }
}
