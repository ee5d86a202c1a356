//! HTTP/1.1 on raw bytes: request parsing ([`parse`]), message framing
//! shared by requests and responses ([`framing`]), response
//! encoding ([`encode`]) and its cached `Date` value ([`date`]),
//! percent-decoding of queries and forms ([`form`]), the server connection
//! loop ([`conn`]) and a keep-alive client ([`client`]). Knows nothing about keys, shards or URLs of the API.

pub mod client;
pub mod conn;
pub mod date;
pub mod encode;
pub mod form;
pub mod framing;
pub mod parse;
