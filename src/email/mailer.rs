//! Where emails go: `.eml` files in a folder (the default), or an SMTP server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// A configured email transport.
#[derive(Clone)]
pub enum Mailer {
    /// Writes each email as a `.eml` file into this folder.
    Files(PathBuf),
    /// Sends through an SMTP server.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

impl Mailer {
    /// A mailer writing into `dir`, created if missing.
    pub fn files(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the mail folder {}", dir.display()))?;
        Ok(Mailer::Files(dir))
    }

    /// A mailer for an `smtp://`, `smtps://` or `smtp://…?tls=required` URL.
    pub fn smtp(url: &str) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .context(
                "--smtp-url is not a valid SMTP URL (smtp://host:port, smtps://user:pass@host)",
            )?
            .timeout(Some(Duration::from_secs(15)))
            .build();
        Ok(Mailer::Smtp(transport))
    }

    /// Sends one email with plain-text and HTML parts.
    pub async fn send(
        &self,
        from: &Mailbox,
        to: &str,
        subject: &str,
        text: String,
        html: String,
    ) -> anyhow::Result<()> {
        let to: Mailbox = to.parse().context("the recipient address is not valid")?;
        let message = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(subject)
            .multipart(MultiPart::alternative_plain_html(text, html))
            .context("building the email")?;
        match self {
            Mailer::Files(dir) => {
                // Written under another name and renamed, so that whoever watches the folder
                // never reads half an email.
                let id = uuid::Uuid::new_v4();
                let partial = dir.join(format!("{id}.eml.partial"));
                tokio::fs::write(&partial, message.formatted())
                    .await
                    .context("writing the email file")?;
                tokio::fs::rename(&partial, dir.join(format!("{id}.eml")))
                    .await
                    .context("naming the email file")?;
            }
            Mailer::Smtp(transport) => {
                transport.send(message).await.context("sending over SMTP")?;
            }
        }
        Ok(())
    }
}
