//! The RTMP handshake over a socket, with a deadline, on top of rml_rtmp's sans-IO
//! `Handshake` (plain and Flash Player 9 digest variants).

use std::time::Duration;

use bytes::BytesMut;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake not completed within {0:?}")]
    Timeout(Duration),
    #[error("not an RTMP handshake: {0}")]
    Invalid(String),
    #[error("peer closed the connection during the handshake")]
    Closed,
    #[error("I/O error during the handshake: {0}")]
    Io(#[from] std::io::Error),
}

/// Performs the server side of the handshake. Returns bytes the client sent after it (the
/// start of the chunk stream).
pub async fn accept<S>(stream: &mut S, timeout: Duration) -> Result<BytesMut, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(timeout, run(stream, Handshake::new(PeerType::Server), None))
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?
}

/// Performs the client side of the handshake.
pub async fn connect<S>(stream: &mut S, timeout: Duration) -> Result<BytesMut, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut handshake = Handshake::new(PeerType::Client);
    let c0c1 = handshake
        .generate_outbound_p0_and_p1()
        .map_err(|e| HandshakeError::Invalid(e.to_string()))?;
    tokio::time::timeout(timeout, run(stream, handshake, Some(c0c1)))
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?
}

async fn run<S>(
    stream: &mut S,
    handshake: Handshake,
    first: Option<Vec<u8>>,
) -> Result<BytesMut, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(bytes) = first {
        stream.write_all(&bytes).await?;
    }
    // The whole handshake is 3073 bytes each way; reading in small pieces keeps what a
    // garbage-sending peer can make us hold to a few kilobytes. On the heap, and only for the
    // handshake, so a long-lived connection task does not carry it.
    let mut handshake = Box::new(handshake);
    let mut buf = vec![0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(HandshakeError::Closed);
        }
        match handshake.process_bytes(&buf[..n]) {
            Ok(HandshakeProcessResult::InProgress { response_bytes }) => {
                if !response_bytes.is_empty() {
                    stream.write_all(&response_bytes).await?;
                }
            }
            Ok(HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            }) => {
                if !response_bytes.is_empty() {
                    stream.write_all(&response_bytes).await?;
                }
                return Ok(BytesMut::from(&remaining_bytes[..]));
            }
            Err(e) => return Err(HandshakeError::Invalid(format!("{e:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn client_and_server_complete_a_handshake() {
        let (mut a, mut b) = tokio::io::duplex(16 << 10);
        let server = tokio::spawn(async move { accept(&mut a, Duration::from_secs(5)).await });
        connect(&mut b, Duration::from_secs(5)).await.unwrap();
        b.write_all(b"after").await.unwrap();
        // The server may or may not have read the trailing bytes with the last packet.
        let leftover = server.await.unwrap().unwrap();
        assert!(leftover.is_empty() || &leftover[..] == b"after");
    }

    #[tokio::test]
    async fn refuses_garbage_and_silence() {
        let (mut a, mut b) = tokio::io::duplex(16 << 10);
        let server = tokio::spawn(async move { accept(&mut a, Duration::from_secs(5)).await });
        b.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(matches!(
            server.await.unwrap(),
            Err(HandshakeError::Invalid(_))
        ));

        let (mut a, _b) = tokio::io::duplex(16 << 10);
        let result = accept(&mut a, Duration::from_millis(50)).await;
        assert!(matches!(result, Err(HandshakeError::Timeout(_))));
    }
}
