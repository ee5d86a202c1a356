//! What the request header fields the API reads mean: corekv's own
//! `X-Corekv-Forwarded` (another node already routed the request),
//! `Authorization` (the cluster token, `Bearer` or bare), the form
//! `Content-Type` of `/set` bodies, and the entity-tag lists of `If-Match`
//! and `If-None-Match` (RFC 9110 §13.1.1-2, compared as §8.8.3.2 says).
//!
//! The http layer only finds fields by name ([`Request::header`]); their
//! meaning lives here. Depends on `http::parse::Request`, `protocol` (the
//! header name nodes mark each other's requests with) and `storage::Tags`
//! (what a tag list becomes).

use super::ApiError;
use crate::http::parse::Request;
use crate::protocol::FORWARDED_HEADER;
use crate::storage::{Cond, Tags};

/// The request was sent by another corekv node that already routed it.
pub(super) fn forwarded(req: &Request) -> bool {
    req.header(FORWARDED_HEADER).is_some()
}

/// The credentials of `Authorization` (its last field line): after a
/// `Bearer` scheme when there is one, else the whole value; `None` without
/// the header.
pub(super) fn credentials(req: &Request) -> Option<&[u8]> {
    let given = req.headers("authorization").last()?.trim_ascii();
    Some(match given.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => given[7..].trim_ascii(),
        _ => given,
    })
}

/// `Content-Type: application/x-www-form-urlencoded` (parameters may
/// follow; the last field line counts).
pub(super) fn form_body(req: &Request) -> bool {
    const FORM: &[u8] = b"application/x-www-form-urlencoded";
    req.headers("content-type")
        .last()
        .and_then(|v| v.get(..FORM.len()))
        .is_some_and(|v| v.eq_ignore_ascii_case(FORM))
}

/// The condition of `If-Match` (strong comparison) and `If-None-Match`
/// (weak comparison); [`Cond::Always`] without either (RFC 9110 §13.2.2
/// orders them; a failing If-None-Match is 304 on reads and 412 on writes,
/// see `read` and `format` in the parent module).
pub(super) fn condition(req: &Request) -> Result<Cond, ApiError> {
    let if_match = req
        .header_list("if-match")
        .map(|v| header_tags(&v, "If-Match", true))
        .transpose()?;
    let if_none_match = req
        .header_list("if-none-match")
        .map(|v| header_tags(&v, "If-None-Match", false))
        .transpose()?;
    Ok(if if_match.is_none() && if_none_match.is_none() {
        Cond::Always
    } else {
        Cond::Http {
            if_match,
            if_none_match,
        }
    })
}

/// One entity tag of a conditional header (RFC 9110 §8.8.3).
#[derive(Clone, Debug, PartialEq, Eq)]
struct EntityTag {
    /// `W/` prefix.
    weak: bool,
    /// The version the opaque tag names, when it is one of corekv's
    /// (`"<version>"`, canonical decimal); other well-formed tags name none.
    version: Option<u64>,
}

/// An `If-Match` / `If-None-Match` field value (RFC 9110 §13.1.1-2).
#[derive(Clone, Debug, PartialEq, Eq)]
enum TagList {
    /// `*`
    Any,
    /// `#entity-tag`: a comma-separated list (empty elements are ignored,
    /// RFC 9110 §5.6.1.2).
    Tags(Vec<EntityTag>),
}

/// Parses `"*" / #entity-tag`, where `entity-tag = [ "W/" ] DQUOTE
/// *etagc DQUOTE` and `etagc` is `!` or `#`..`~` or obs-text. `None` when
/// the value is malformed (an unquoted tag, a lower-case `w/`, a stray
/// character, `*` inside a list).
fn parse_tag_list(raw: &[u8]) -> Option<TagList> {
    let value = raw.trim_ascii();
    if value == b"*" {
        return Some(TagList::Any);
    }
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_ascii_start();
        match rest.first() {
            None => break,
            // An empty list element.
            Some(b',') => {
                rest = &rest[1..];
                continue;
            }
            Some(_) => {}
        }
        let (weak, tag) = match rest.strip_prefix(b"W/") {
            Some(t) => (true, t),
            None => (false, rest),
        };
        let tag = tag.strip_prefix(b"\"")?;
        let close = tag.iter().position(|&b| b == b'"')?;
        let opaque = &tag[..close];
        if !opaque.iter().all(|&b| b == 0x21 || b >= 0x23 && b != 0x7f) {
            return None;
        }
        tags.push(EntityTag {
            weak,
            version: version_of(opaque),
        });
        // After a tag: optional whitespace, then a comma or the end.
        rest = tag[close + 1..].trim_ascii_start();
        match rest.first() {
            None => break,
            Some(b',') => rest = &rest[1..],
            Some(_) => return None,
        }
    }
    Some(TagList::Tags(tags))
}

/// The version an opaque tag names: canonical decimal only, since tags
/// compare octet by octet (`"07"` is not `"7"`).
fn version_of(opaque: &[u8]) -> Option<u64> {
    let canonical = !opaque.is_empty()
        && opaque.iter().all(u8::is_ascii_digit)
        && (opaque.len() == 1 || opaque[0] != b'0');
    if !canonical {
        return None;
    }
    std::str::from_utf8(opaque).ok()?.parse().ok()
}

/// The versions a header's tags match under its comparison function
/// (RFC 9110 §8.8.3.2): `strong` (If-Match) leaves weak tags out, weak
/// (If-None-Match) compares the opaque tags only.
fn header_tags(raw: &[u8], header: &'static str, strong: bool) -> Result<Tags, ApiError> {
    match parse_tag_list(raw) {
        Some(TagList::Any) => Ok(Tags::Any),
        Some(TagList::Tags(tags)) => Ok(Tags::Versions(
            tags.iter()
                .filter(|t| !(strong && t.weak))
                .filter_map(|t| t.version)
                .collect(),
        )),
        None => Err(ApiError::BadParam(
            header,
            "must be * or a comma-separated list of entity tags such as \"12\", W/\"12\"",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strong(v: u64) -> EntityTag {
        EntityTag {
            weak: false,
            version: Some(v),
        }
    }

    fn weak(v: u64) -> EntityTag {
        EntityTag {
            weak: true,
            version: Some(v),
        }
    }

    const OTHER: EntityTag = EntityTag {
        weak: false,
        version: None,
    };

    #[test]
    fn entity_tag_lists() {
        use TagList::{Any, Tags as L};
        let table: &[(&str, Option<TagList>)] = &[
            ("*", Some(Any)),
            ("  *  ", Some(Any)),
            ("\"12\"", Some(L(vec![strong(12)]))),
            ("W/\"7\"", Some(L(vec![weak(7)]))),
            ("\"1\", \"7\"", Some(L(vec![strong(1), strong(7)]))),
            (
                "\"1\",W/\"7\" ,\t\"9\"",
                Some(L(vec![strong(1), weak(7), strong(9)])),
            ),
            // Empty list elements are ignored; an empty list is a list.
            (", \"3\",, ", Some(L(vec![strong(3)]))),
            ("", Some(L(vec![]))),
            // Well-formed tags that name no version.
            ("\"abc\"", Some(L(vec![OTHER]))),
            ("\"\"", Some(L(vec![OTHER]))),
            ("\"07\"", Some(L(vec![OTHER]))),
            ("\"+7\"", Some(L(vec![OTHER]))),
            ("\"18446744073709551616\"", Some(L(vec![OTHER]))),
            ("\"x\u{80}\"", Some(L(vec![OTHER]))),
            ("\"0\"", Some(L(vec![strong(0)]))),
            ("\"18446744073709551615\"", Some(L(vec![strong(u64::MAX)]))),
            // Malformed.
            ("12", None),
            ("\"12", None),
            ("12\"", None),
            ("w/\"1\"", None),
            ("W/ \"1\"", None),
            ("W/1", None),
            ("\"1\" \"2\"", None),
            ("\"1\"x", None),
            ("*, \"1\"", None),
            ("\"1\", *", None),
            ("\"a b\"", None),
            ("\"a\\\"b\"", None),
            ("\"\x7f\"", None),
            ("\"1\";", None),
        ];
        for (raw, want) in table {
            assert_eq!(&parse_tag_list(raw.as_bytes()), want, "{raw:?}");
        }
        let tags = |raw: &str, strong| header_tags(raw.as_bytes(), "If-Match", strong).ok();
        let vs = |v: &[u64]| Some(Tags::Versions(v.to_vec()));
        // If-Match compares strongly: weak tags never match.
        assert_eq!(tags("W/\"7\", \"1\"", true), vs(&[1]));
        assert_eq!(tags("W/\"7\"", true), vs(&[]));
        // If-None-Match compares weakly.
        assert_eq!(tags("W/\"7\", \"1\"", false), vs(&[7, 1]));
        assert_eq!(tags("\"x\", \"2\"", false), vs(&[2]));
        assert_eq!(tags("*", true), Some(Tags::Any));
        assert_eq!(tags("7", false), None);
    }
}
