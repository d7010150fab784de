//! Accepted connections as the HTTP/2 server writes to them.
//!
//! The HTTP/2 codec copies a frame into its write buffer only when the frame is small; a
//! larger one is chained behind the buffer and, until the next write to the socket, no
//! further frame can be buffered. When the connection reports vectored writes, "small" is
//! 256 bytes, less than one Check answer with identity headers and metadata: every answer
//! then went out in two writes (its data, then its trailers) and answers could not share a
//! write. Without vectored writes the codec copies frames up to 1 KiB, so a connection's
//! finished answers leave in one write. Copying a few hundred bytes costs far less than a
//! system call.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::Connected;

/// A connection that does not offer vectored writes, so the HTTP/2 codec coalesces frames.
pub struct Unvectored<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for Unvectored<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Unvectored<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for Unvectored<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

/// Prepares an accepted plaintext connection: Nagle's algorithm off (answers are small and
/// must leave at once, not wait for the client's delayed acknowledgement) and frames
/// coalesced.
pub fn plaintext(stream: TcpStream) -> Unvectored<TcpStream> {
    let _ = stream.set_nodelay(true);
    Unvectored(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_offer_no_vectored_writes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_client, accepted) = (client.unwrap(), accepted.unwrap().0);
        assert!(
            accepted.is_write_vectored(),
            "the socket itself is vectored"
        );
        let connection = plaintext(accepted);
        assert!(!connection.is_write_vectored());
        assert!(connection.0.nodelay().unwrap());
    }
}
