//! Email addresses: one spelling per mailbox, in the syntax the mailer delivers as written.
//!
//! Two addresses compare equal only if they name the same mailbox. ASCII letters fold to lower
//! case; every other character is compared exactly after one normalization (NFC), because
//! Unicode case folding maps different mailboxes onto one (KELVIN SIGN folds to `k`). Characters
//! that would let one address pass for another are refused rather than folded: compatibility
//! forms of ASCII (KELVIN SIGN, fullwidth letters, ligatures) and invisible characters.
//!
//! The syntax is the part of RFC 5322 that the mailer (lettre) reads back unchanged: a dot-atom
//! before the `@` and a host name after it. Quoted names, comments and IP literals are refused,
//! because the mailer would deliver them to another spelling than the one stored.

use std::str::FromStr as _;

use icu_normalizer::{ComposingNormalizerBorrowed, DecomposingNormalizerBorrowed};
use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory, Script};
use icu_properties::{CodePointMapData, CodePointSetData};

/// An email address, trimmed and normalized so that equal values are the same mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Longest accepted address, in bytes (RFC 5321 path limit).
    pub const MAX_LEN: usize = 254;
    /// Longest accepted local part (before the `@`), in bytes (RFC 5321).
    pub const MAX_LOCAL_LEN: usize = 64;
    /// Longest accepted label of the domain, in bytes (RFC 1035).
    pub const MAX_LABEL_LEN: usize = 63;

    /// Trims, validates and normalizes an address. The error says what to fix; it names a
    /// refused character by its code point.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("is required".to_owned());
        }
        // Checked before normalizing: NFC itself turns KELVIN SIGN into an ASCII K.
        trimmed.chars().try_for_each(check_character)?;
        // Lower case first, then NFC: an ASCII letter lowered may compose with a mark that
        // follows it ("T" + U+0308 has no composed form, "t" + U+0308 does), and the stored
        // form must be what parsing it again gives.
        let lowered: String = trimmed.chars().map(|c| c.to_ascii_lowercase()).collect();
        let normalized = ComposingNormalizerBorrowed::new_nfc().normalize(&lowered).into_owned();
        if normalized.len() > Self::MAX_LEN {
            return Err("must be at most 254 characters".to_owned());
        }
        let mut parts = normalized.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err("must contain exactly one @".to_owned());
        };
        check_local_part(local)?;
        check_domain(domain)?;
        check_scripts(local, "before the @")?;
        for label in domain.split('.') {
            check_scripts(label, "in a part of the domain")?;
        }
        check_mailer_reads_it_back(&normalized)?;
        Ok(Self(normalized))
    }

    /// Wraps a stored, already normalized address.
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A form fit for logs: the first character of the local part and the domain.
    pub fn redacted(&self) -> String {
        match self.0.split_once('@') {
            Some((local, domain)) => {
                let first: String = local.chars().take(1).collect();
                format!("{first}***@{domain}")
            }
            None => "***".to_owned(),
        }
    }
}

/// `U+212A`, as messages name characters.
fn code_point(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

fn check_character(c: char) -> Result<(), String> {
    if matches!(c, ' ' | '\t' | ',' | '<' | '>') {
        return Err("must be a single address without spaces, commas or angle brackets".to_owned());
    }
    if c.is_ascii_control() {
        return Err(format!("must not contain the control character {}", code_point(c)));
    }
    if c.is_ascii() {
        return Ok(());
    }
    let category = CodePointMapData::<GeneralCategory>::new().get(c);
    let invisible = CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
        || matches!(
            category,
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::SpaceSeparator
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        );
    if invisible {
        return Err(format!("must not contain the invisible or blank character {}", code_point(c)));
    }
    if matches!(
        category,
        GeneralCategory::PrivateUse | GeneralCategory::Unassigned | GeneralCategory::Surrogate
    ) {
        return Err(format!(
            "must not contain {}, a character with no agreed meaning",
            code_point(c)
        ));
    }
    if let Some(ascii) = ascii_look_alike(c) {
        return Err(format!(
            "must not contain {} (\u{201C}{c}\u{201D}), a look-alike of the ASCII \
             \u{201C}{ascii}\u{201D}; type the address with plain letters",
            code_point(c)
        ));
    }
    Ok(())
}

/// The ASCII a non-ASCII character stands in for, if it is a compatibility form of ASCII (its
/// compatibility decomposition differs from its canonical one and contains ASCII, as for
/// fullwidth letters and ligatures) or normalizes to ASCII outright (KELVIN SIGN). A letter
/// with an accent decomposes canonically and is a letter of its own: `é` is not `e`.
fn ascii_look_alike(c: char) -> Option<String> {
    let mut buffer = [0u8; 4];
    let alone: &str = c.encode_utf8(&mut buffer);
    let ascii_of = |text: &str| -> Option<String> {
        let ascii: String = text.chars().filter(char::is_ascii).collect();
        (!ascii.is_empty()).then_some(ascii)
    };
    if let Some(ascii) = ascii_of(&ComposingNormalizerBorrowed::new_nfc().normalize(alone)) {
        return Some(ascii);
    }
    let compatibility = DecomposingNormalizerBorrowed::new_nfkd().normalize(alone);
    let canonical = DecomposingNormalizerBorrowed::new_nfd().normalize(alone);
    if compatibility != canonical { ascii_of(&compatibility) } else { None }
}

/// Refuses a part of an address whose letters come from several scripts, as `аdmin` with a
/// Cyrillic `а` among Latin letters, which reads as another address. Scripts that are written
/// together are allowed together, as Unicode's "highly restrictive" level has it: Latin with
/// Han and the Japanese kana, with Han and Bopomofo, or with Han and Hangul.
fn check_scripts(part: &str, where_: &str) -> Result<(), String> {
    let scripts = CodePointMapData::<Script>::new();
    let mut seen: Vec<Script> = Vec::new();
    for c in part.chars() {
        let script = scripts.get(c);
        // Digits, punctuation and combining marks belong to no script of their own.
        if matches!(script, Script::Common | Script::Inherited) || seen.contains(&script) {
            continue;
        }
        seen.push(script);
    }
    let allowed = |set: &[Script]| seen.iter().all(|s| set.contains(s));
    let together = seen.len() <= 1
        || allowed(&[Script::Latin, Script::Han, Script::Hiragana, Script::Katakana])
        || allowed(&[Script::Latin, Script::Han, Script::Bopomofo])
        || allowed(&[Script::Latin, Script::Han, Script::Hangul]);
    if together {
        return Ok(());
    }
    let named = icu_properties::PropertyNamesLong::<Script>::new();
    let names: Vec<&str> = seen.iter().map(|s| named.get(*s).unwrap_or("unknown")).collect();
    Err(format!(
        "mixes letters of several scripts {where_} ({}), so that it can pass for another \
         address; type it in one script",
        names.join(", ")
    ))
}

fn check_local_part(local: &str) -> Result<(), String> {
    if local.is_empty() {
        return Err("must have a name before the @".to_owned());
    }
    if local.contains('"') {
        return Err("must not use a quoted name before the @: the mailer would deliver it \
                    without the quotes, to another address"
            .to_owned());
    }
    if local.contains(['(', ')']) {
        return Err("must not contain comments in parentheses".to_owned());
    }
    if local.len() > Email::MAX_LOCAL_LEN {
        return Err("must have at most 64 bytes before the @".to_owned());
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(
            "must not start or end with a dot, or have two dots in a row, before the @".to_owned()
        );
    }
    // RFC 5322 atext; other characters than ASCII are left to the mailer's check below.
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
    if let Some(bad) = local.chars().find(|c| c.is_ascii() && !atext(*c)) {
        return Err(format!("must not contain \u{201C}{bad}\u{201D} before the @"));
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), String> {
    if domain.contains(['[', ']']) {
        return Err("must name a domain after the @, not an IP address in brackets".to_owned());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 || labels.iter().any(|label| label.is_empty()) {
        return Err("must have a dotted domain after the @, such as example.com".to_owned());
    }
    for label in &labels {
        if let Some(bad) =
            label.chars().find(|c| c.is_ascii() && !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "must have only letters, digits, hyphens and dots after the @, not \u{201C}{bad}\u{201D}"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("must not start or end a part of the domain with a hyphen".to_owned());
        }
        if label.len() > Email::MAX_LABEL_LEN {
            return Err("must have at most 63 bytes between two dots of the domain".to_owned());
        }
    }
    if labels.last().is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit())) {
        return Err("must name a domain after the @, not an IP address".to_owned());
    }
    Ok(())
}

/// The mailer parses each recipient again when it sends (`email::mailer`): an address is kept
/// only if that parse succeeds and yields this very address, so what is stored, compared and
/// delivered is one string.
fn check_mailer_reads_it_back(address: &str) -> Result<(), String> {
    match lettre::message::Mailbox::from_str(address) {
        Ok(mailbox)
            if mailbox.name.is_none() && AsRef::<str>::as_ref(&mailbox.email) == address =>
        {
            Ok(())
        }
        _ => {
            Err("is not an address mail can be delivered to; check it for typing errors".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_trimmed_and_fold_only_ascii_letters() {
        for (input, stored) in [
            ("  Ada@Example.COM ", "ada@example.com"),
            ("o'brien+tag@mail.example.co.uk", "o'brien+tag@mail.example.co.uk"),
            ("first.last@x-y.io", "first.last@x-y.io"),
            ("J\u{F6}RG@Example.DE", "j\u{F6}rg@example.de"),
            // A combining diaeresis composes: one mailbox, one spelling.
            ("jo\u{308}rg@example.de", "j\u{F6}rg@example.de"),
            // Non-ASCII letters keep their case: Ö and ö are different characters.
            ("J\u{D6}RG@example.de", "j\u{D6}rg@example.de"),
            (
                "\u{7528}\u{6237}@\u{4F8B}\u{5B50}.\u{5E7F}\u{544A}",
                "\u{7528}\u{6237}@\u{4F8B}\u{5B50}.\u{5E7F}\u{544A}",
            ),
            ("anna@b\u{FC}cher.example", "anna@b\u{FC}cher.example"),
            ("anna@xn--bcher-kva.example", "anna@xn--bcher-kva.example"),
            ("\u{2603}@example.com", "\u{2603}@example.com"),
            ("\u{438}\u{432}\u{430}\u{43D}@example.ru", "\u{438}\u{432}\u{430}\u{43D}@example.ru"),
            // Scripts written together: Japanese mixes Han, kana and Latin.
            (
                "\u{5C71}\u{7530}\u{305F}\u{308D}\u{3046}taro@example.jp",
                "\u{5C71}\u{7530}\u{305F}\u{308D}\u{3046}taro@example.jp",
            ),
        ] {
            assert_eq!(Email::parse(input).map(|e| e.0), Ok(stored.to_owned()), "{input:?}");
        }
    }

    #[test]
    fn refused_addresses_say_why() {
        let long_local = format!("{}@x.io", "a".repeat(65));
        let long_address = format!("a@{}.io", "b".repeat(251));
        let long_label = format!("a@{}.io", "b".repeat(64));
        for (input, says) in [
            ("", "is required"),
            ("   ", "is required"),
            ("ada", "exactly one @"),
            ("ada@@example.com", "exactly one @"),
            ("a@b@example.com", "exactly one @"),
            ("@example.com", "a name before the @"),
            ("ada@", "dotted domain"),
            ("ada@example", "dotted domain"),
            ("ada@example..com", "dotted domain"),
            ("ada@.com", "dotted domain"),
            ("ada lovelace@example.com", "without spaces"),
            ("Ada <ada@example.com>", "angle brackets"),
            // A Cyrillic а among Latin letters reads as admin@example.com.
            ("\u{430}dmin@example.com", "several scripts"),
            ("admin@ex\u{430}mple.com", "several scripts"),
            ("\u{3B1}lpha\u{3B2}@example.com", "several scripts"),
            ("ada@example.com, bob@example.com", "commas"),
            ("ada\u{7}@example.com", "control character U+0007"),
            ("\"ada\"@example.com", "quoted name"),
            ("\"a@b\"@example.com", "exactly one @"),
            ("ada(work)@example.com", "comments"),
            ("ada@[127.0.0.1]", "IP address in brackets"),
            ("ada@[IPv6:::1]", "IP address in brackets"),
            ("ada@127.0.0.1", "not an IP address"),
            (".ada@example.com", "dot"),
            ("ada.@example.com", "dot"),
            ("a..da@example.com", "dot"),
            ("ada\\x@example.com", "\u{201C}\\\u{201D}"),
            ("ada:x@example.com", "\u{201C}:\u{201D}"),
            ("ada@exam_ple.com", "\u{201C}_\u{201D}"),
            ("ada@-example.com", "hyphen"),
            ("ada@example-.com", "hyphen"),
            (long_local.as_str(), "64 bytes"),
            (long_address.as_str(), "254"),
            (long_label.as_str(), "63 bytes"),
            // Look-alikes of ASCII.
            ("\u{212A}ate@example.com", "U+212A"),
            ("\u{FF4B}ate@example.com", "U+FF4B"),
            ("\u{FB01}ona@example.com", "U+FB01"),
            ("ada@example\u{FF0E}com", "U+FF0E"),
            ("ada\u{2082}@example.com", "U+2082"),
            ("\u{1D41A}da@example.com", "U+1D41A"),
            ("\u{2460}@example.com", "U+2460"),
            // Invisible and blank characters.
            ("a\u{200B}da@example.com", "U+200B"),
            ("ada\u{AD}@example.com", "U+00AD"),
            ("ada@exam\u{2060}ple.com", "U+2060"),
            ("ada\u{FE0F}@example.com", "U+FE0F"),
            ("\u{202E}ada@example.com", "U+202E"),
            ("a\u{A0}da@example.com", "U+00A0"),
            ("a\u{3000}da@example.com", "U+3000"),
            ("a\u{E000}da@example.com", "U+E000"),
            // Whatever the mailer refuses: a label may not begin with a combining mark.
            ("ada@\u{301}example.com", "cannot be delivered"),
        ] {
            let refused = Email::parse(input).expect_err(input);
            let says = if says == "cannot be delivered" { "mail can be delivered" } else { says };
            assert!(refused.contains(says), "{input:?}: {refused:?} should say {says:?}");
        }
    }

    #[test]
    fn an_accented_letter_is_no_look_alike() {
        for letter in ['\u{E9}', '\u{F6}', '\u{F1}', '\u{C5}', '\u{142}', '\u{430}', '\u{3B1}'] {
            assert_eq!(ascii_look_alike(letter), None, "{letter}");
        }
        assert_eq!(ascii_look_alike('\u{212A}').as_deref(), Some("K"));
        assert_eq!(ascii_look_alike('\u{FB01}').as_deref(), Some("fi"));
        assert_eq!(ascii_look_alike('\u{FF21}').as_deref(), Some("A"));
    }

    #[test]
    fn a_capital_before_a_combining_mark_is_stored_as_parsing_it_again_gives() {
        let email = Email::parse("AT\u{308}@a.a").unwrap();
        assert_eq!(email.as_str(), "a\u{1E97}@a.a");
        assert_eq!(Email::parse(email.as_str()), Ok(email));
    }

    #[test]
    fn redacted_email_hides_the_local_part() {
        let email = Email::parse("grace.hopper@navy.mil").unwrap();
        assert_eq!(email.redacted(), "g***@navy.mil");
    }

    proptest::proptest! {
        /// What is stored is what the mailer delivers: lettre reads every accepted address back
        /// as itself, and parsing a stored address again changes nothing.
        #[test]
        fn every_accepted_address_is_read_back_unchanged(
            text in proptest::string::string_regex(
                "[ A-Za-z0-9.\"()@\\[\\]_+'=-]{0,3}[A-Za-z0-9.+'_éöÖ\u{308}\u{212A}\u{FF41}-]{1,12}@[a-zA-Z0-9.\u{FC}_-]{1,16}\\.[a-z0-9]{1,4}[ .]{0,1}"
            ).unwrap()
        ) {
            if let Ok(email) = Email::parse(&text) {
                let mailbox = lettre::message::Mailbox::from_str(email.as_str());
                proptest::prop_assert!(mailbox.is_ok(), "{:?}", email);
                let mailbox = mailbox.unwrap();
                proptest::prop_assert_eq!(AsRef::<str>::as_ref(&mailbox.email), email.as_str());
                proptest::prop_assert!(lettre::Address::from_str(email.as_str()).is_ok());
                proptest::prop_assert_eq!(Email::parse(email.as_str()), Ok(email.clone()));
                proptest::prop_assert!(!email.as_str().chars().any(|c| c.is_ascii_uppercase()));
            }
        }
    }
}
