//! The invitation email, in plain text and HTML.

use crate::domain::{Role, Timestamp};

/// What an invitation email says.
pub struct InvitationEmail<'a> {
    pub organization: &'a str,
    /// Who invited (their email when known, else their user id).
    pub inviter: &'a str,
    /// The role offered.
    pub role: Role,
    /// When the link stops working.
    pub expire_time: Timestamp,
    /// The accept link, with the token.
    pub accept_url: &'a str,
    /// The token alone, for clients that ask for it rather than follow the link.
    pub token: &'a str,
}

/// A rendered email.
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Owner => "Owner",
        Role::Admin => "Admin",
        Role::Billing => "Billing",
        Role::Member => "Member",
    }
}

fn expiry_text(expire_time: Timestamp) -> String {
    chrono::DateTime::from_timestamp_micros(expire_time.as_micros())
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "soon".to_owned())
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// Builds the accept link from a template with `{token}`.
pub fn accept_url(template: &str, token: &str) -> String {
    template.replace("{token}", token)
}

/// Renders the email.
pub fn invitation(email: &InvitationEmail<'_>) -> Rendered {
    let role = role_name(email.role);
    let expiry = expiry_text(email.expire_time);
    let subject = format!("{} invited you to join {} on Roster", email.inviter, email.organization);
    let text = format!(
        "Hello,\n\n{inviter} invited you to join the organization \"{org}\" as {role}.\n\n\
         Accept the invitation here:\n{url}\n\n\
         Or paste this invitation code where asked:\n{token}\n\n\
         This link works once and expires on {expiry}.\n\
         If you did not expect this invitation, you can ignore this email.\n",
        inviter = email.inviter,
        org = email.organization,
        url = email.accept_url,
        token = email.token,
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><body>\n\
         <p>Hello,</p>\n\
         <p>{inviter} invited you to join the organization <strong>{org}</strong> as \
         <strong>{role}</strong>.</p>\n\
         <p><a href=\"{url}\">Accept the invitation</a></p>\n\
         <p>This link works once and expires on {expiry}.<br>\
         If you did not expect this invitation, you can ignore this email.</p>\n\
         </body></html>\n",
        inviter = escape(email.inviter),
        org = escape(email.organization),
        url = escape(email.accept_url),
    );
    Rendered { subject, text, html }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_email_names_everything_and_escapes_html() {
        let rendered = invitation(&InvitationEmail {
            organization: "Acme <Data>",
            inviter: "owner@acme.io",
            role: Role::Admin,
            expire_time: Timestamp::from_micros(1_800_000_000_000_000),
            accept_url: "https://app.example/accept?token=abc&x=1",
            token: "abc",
        });
        for part in [&rendered.text, &rendered.html] {
            assert!(part.contains("owner@acme.io"));
            assert!(part.contains("Admin"));
            assert!(part.contains("2027-01-15"));
        }
        assert!(rendered.text.contains("Acme <Data>"));
        assert!(rendered.html.contains("Acme &lt;Data&gt;"));
        assert!(rendered.html.contains("token=abc&amp;x=1"));
        assert!(rendered.text.contains("https://app.example/accept?token=abc&x=1"));
    }
}
