//! A small SMTP server on loopback that accepts every message and keeps it, so tests can read
//! the emails Roster sends over a real SMTP conversation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify};

/// One received email.
#[derive(Debug, Clone)]
pub struct ReceivedEmail {
    /// RCPT TO addresses.
    pub recipients: Vec<String>,
    /// The raw message (headers and body) as sent in DATA.
    pub data: String,
}

impl ReceivedEmail {
    /// The invitation token, read from the line after "invitation code".
    pub fn token(&self) -> Option<String> {
        let mut lines = self.data.lines();
        while let Some(line) = lines.next() {
            if line.contains("invitation code") {
                return lines.next().map(|t| t.trim().to_owned());
            }
        }
        None
    }
}

/// The sink's handle.
#[derive(Clone)]
pub struct SmtpSink {
    /// Where it listens.
    pub port: u16,
    received: Arc<Mutex<Vec<ReceivedEmail>>>,
    arrived: Arc<Notify>,
    /// When set, a message is kept but its DATA is answered with a temporary failure, as by a
    /// server that stored the mail and then failed to say so: the sender will try again.
    fail_replies: Arc<AtomicBool>,
}

impl SmtpSink {
    /// Starts the sink on an ephemeral loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind SMTP sink");
        Self::serve(listener)
    }

    /// Starts the sink on a given listener (to come back on a known port).
    pub fn serve(listener: TcpListener) -> Self {
        let port = listener.local_addr().unwrap().port();
        let sink = SmtpSink {
            port,
            received: Arc::default(),
            arrived: Arc::new(Notify::new()),
            fail_replies: Arc::default(),
        };
        let handle = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handle = handle.clone();
                tokio::spawn(async move {
                    let _ = handle.session(stream).await;
                });
            }
        });
        sink
    }

    async fn session(&self, stream: tokio::net::TcpStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        write.write_all(b"220 sink.localhost ESMTP ready\r\n").await?;
        let mut recipients = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let command = line.trim_end().to_ascii_uppercase();
            if command.starts_with("EHLO") {
                write.write_all(b"250-sink.localhost\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n").await?;
            } else if command.starts_with("HELO") || command.starts_with("MAIL FROM") {
                write.write_all(b"250 OK\r\n").await?;
            } else if command.starts_with("RCPT TO") {
                let address = line.trim_end()[8..].trim().trim_matches(['<', '>']).to_owned();
                recipients.push(address);
                write.write_all(b"250 OK\r\n").await?;
            } else if command == "DATA" {
                write.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    // Undo dot-stuffing.
                    let content = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(content);
                }
                self.received
                    .lock()
                    .await
                    .push(ReceivedEmail { recipients: std::mem::take(&mut recipients), data });
                self.arrived.notify_waiters();
                if self.fail_replies.load(Ordering::SeqCst) {
                    write.write_all(b"451 4.3.0 stored, but reporting a failure\r\n").await?;
                } else {
                    write.write_all(b"250 OK queued\r\n").await?;
                }
            } else if command == "RSET" || command == "NOOP" {
                recipients.clear();
                write.write_all(b"250 OK\r\n").await?;
            } else if command == "QUIT" {
                write.write_all(b"221 Bye\r\n").await?;
                return Ok(());
            } else {
                write.write_all(b"502 Command not implemented\r\n").await?;
            }
        }
    }

    /// Makes the sink keep each message but answer its DATA with a temporary failure (`true`),
    /// or answer normally again (`false`).
    pub fn fail_replies(&self, fail: bool) {
        self.fail_replies.store(fail, Ordering::SeqCst);
    }

    /// Every email received so far.
    pub async fn all(&self) -> Vec<ReceivedEmail> {
        self.received.lock().await.clone()
    }

    /// Waits until `count` emails to `recipient` have arrived and returns the newest.
    pub async fn wait_for(&self, recipient: &str, count: usize) -> ReceivedEmail {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.arrived.notified();
            {
                let received = self.received.lock().await;
                let matching: Vec<&ReceivedEmail> = received
                    .iter()
                    .filter(|m| m.recipients.iter().any(|r| r.eq_ignore_ascii_case(recipient)))
                    .collect();
                if matching.len() >= count {
                    return matching[count - 1].clone();
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "no email #{count} to {recipient} within 20 s");
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }
}
