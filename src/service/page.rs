//! Paging: page sizes and opaque page tokens. A token carries the list's kind and the last key
//! returned; a token from another list, or one that does not decode, is INVALID_ARGUMENT.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::Error;

/// Page size used when a request asks for 0.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Largest page size accepted.
pub const MAX_PAGE_SIZE: u64 = 1000;

/// A validated page request.
#[derive(Debug, Clone)]
pub struct PageRequest {
    /// How many items to return at most.
    pub size: u64,
    /// The last key of the previous page.
    pub after: Option<String>,
}

/// Validates `page_size` and decodes `page_token` for a list of `kind`.
pub fn parse(kind: &str, page_size: i32, page_token: &str) -> Result<PageRequest, Error> {
    let size = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n < 0 => return Err(Error::invalid("page_size", "must not be negative")),
        n if n as u64 > MAX_PAGE_SIZE => {
            return Err(Error::invalid("page_size", "must be at most 1000"));
        }
        n => n as u64,
    };
    if page_token.is_empty() {
        return Ok(PageRequest { size, after: None });
    }
    let invalid = || {
        Error::invalid("page_token", "is not a token returned by this list; start again without it")
    };
    if page_token.len() > 2048 {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(page_token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (token_kind, after) = text.split_once(':').ok_or_else(invalid)?;
    // Every key a list returns is printable; a control character (PostgreSQL refuses a NUL in
    // text) can only come from a forged token.
    if token_kind != kind || after.is_empty() || after.chars().any(char::is_control) {
        return Err(invalid());
    }
    Ok(PageRequest { size, after: Some(after.to_owned()) })
}

/// Encodes the token for the page after `last_key`.
pub fn token(kind: &str, last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{last_key}"))
}

/// One page of a list.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Empty on the last page.
    pub next_page_token: String,
}

/// Cuts a result fetched with one extra row down to the page and makes the next token.
pub fn finish<T>(kind: &str, mut items: Vec<T>, size: u64, key: impl Fn(&T) -> String) -> Page<T> {
    if items.len() as u64 > size {
        items.truncate(size as usize);
        let next_page_token = items.last().map(|last| token(kind, &key(last))).unwrap_or_default();
        Page { items, next_page_token }
    } else {
        Page { items, next_page_token: String::new() }
    }
}

/// Parses a cursor that must be a UUID-shaped key, rejecting forged tokens.
pub fn uuid_cursor<T>(
    after: Option<String>,
    parse: impl Fn(&str) -> Result<T, crate::domain::ids::IdError>,
) -> Result<Option<T>, Error> {
    after
        .map(|text| {
            parse(&text).map_err(|_| {
                Error::invalid(
                    "page_token",
                    "is not a token returned by this list; start again without it",
                )
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_list() {
        let t = token("members", "auth0|42");
        assert_eq!(parse("members", 10, &t).unwrap().after.as_deref(), Some("auth0|42"));
        assert!(parse("workspaces", 10, &t).is_err());
        assert!(parse("members", 10, "!!!").is_err());
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(parse("x", 0, "").unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(parse("x", 1000, "").unwrap().size, 1000);
        assert!(parse("x", 1001, "").is_err());
        assert!(parse("x", -1, "").is_err());
    }
}
