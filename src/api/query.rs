//! The query-string endpoints (the API of the Go project corekv descends
//! from): `/get`, `/set`, `/delete` with query or form parameters.
//!
//! Pure: a parsed request in, a [`KvRequest`] or an [`ApiError`] out.

use super::{ApiError, MAX_MIN_SEQ_WAIT_MS, MIN_SEQ_WAIT_MS, headers};
use crate::http::form;
use crate::http::parse::{Method, Request};
use crate::protocol::{KvOp, KvRequest, Style};
use crate::storage::Cond;

/// Parameters of a query-string endpoint: the query, plus a form body on POST/PUT.
pub(super) fn parse(req: &Request, max_key: usize) -> Result<KvRequest, ApiError> {
    let (allow, ok) = match req.path() {
        b"/get" => (
            "GET, HEAD, POST",
            matches!(req.method, Method::Get | Method::Head | Method::Post),
        ),
        b"/set" => (
            "GET, POST, PUT",
            matches!(req.method, Method::Get | Method::Post | Method::Put),
        ),
        _ => (
            "GET, POST, DELETE",
            matches!(req.method, Method::Get | Method::Post | Method::Delete),
        ),
    };
    if !ok {
        return Err(ApiError::MethodNotAllowed(allow));
    }
    let mut params = form::parse_pairs(req.query()).map_err(|_| ApiError::BadEncoding("query"))?;
    if matches!(req.method, Method::Post | Method::Put)
        && (headers::form_body(req) || !req.body().is_empty())
    {
        params
            .extend(form::parse_pairs(req.body()).map_err(|_| ApiError::BadEncoding("form body"))?);
    }
    let mut take = |name: &str| take_param(&mut params, name);
    let key = check_key(take("key").ok_or(ApiError::MissingParam("key"))?, max_key)?;
    let op = match req.path() {
        b"/get" => KvOp::Get,
        b"/set" => KvOp::Set(take("value").ok_or(ApiError::MissingParam("value"))?),
        _ => KvOp::Delete,
    };
    let (min_seq, wait_ms) = read_wait(&mut take)?;
    Ok(KvRequest {
        op,
        key,
        min_seq,
        wait_ms,
        cond: Cond::Always,
        style: Style::Query,
    })
}

/// Removes and returns the first parameter called `name`.
pub(super) fn take_param(params: &mut form::Pairs, name: &str) -> Option<Vec<u8>> {
    params
        .iter()
        .position(|(n, _)| n == name.as_bytes())
        .map(|i| params.remove(i).1)
}

/// A key must be 1..=`max_key` bytes.
pub(super) fn check_key(key: Vec<u8>, max_key: usize) -> Result<Vec<u8>, ApiError> {
    if key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if key.len() > max_key {
        return Err(ApiError::KeyTooLarge {
            len: key.len(),
            max: max_key,
        });
    }
    Ok(key)
}

/// The optional `min_seq` and `wait_ms` parameters.
pub(super) fn read_wait(
    take: &mut impl FnMut(&str) -> Option<Vec<u8>>,
) -> Result<(u64, u64), ApiError> {
    let mut number = |name: &'static str| -> Result<Option<u64>, ApiError> {
        take(name)
            .map(|v| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .ok_or(ApiError::BadParam(name, "must be a whole number"))
            })
            .transpose()
    };
    let min_seq = number("min_seq")?.unwrap_or(0);
    let wait_ms = number("wait_ms")?
        .unwrap_or(MIN_SEQ_WAIT_MS)
        .min(MAX_MIN_SEQ_WAIT_MS);
    Ok((min_seq, wait_ms))
}
