//! `POST /admin/promote?shard=NAME[&to=ADDR]`: a planned switchover of a
//! shard's primary role (the control plane fences the old primary, waits
//! for the target to catch up, then moves the role in a new epoch; see
//! `control`). The token is required when one is configured.
//!
//! Depends on `control` (the client handle; the switchover runs on the
//! control plane's thread and is awaited here without blocking) and the
//! API's own helpers.

use super::query::take_param;
use super::{Api, ApiError};
use crate::control::{ControlError, outcome, shard_named};
use crate::http::encode::{JSON, Response};
use crate::http::form;
use crate::http::parse::{Method, Request};

impl Api {
    pub(super) async fn promote(&self, req: &Request) -> Result<Response, ApiError> {
        self.authorize(req)?;
        if req.method != Method::Post {
            return Err(ApiError::MethodNotAllowed("POST"));
        }
        let Some(control) = self.control.as_ref() else {
            return Err(ApiError::Switchover {
                status: 409,
                why: "this cluster has static roles: start every process with --etcd to move them"
                    .into(),
            });
        };
        let mut params =
            form::parse_pairs(req.query()).map_err(|_| ApiError::BadEncoding("query"))?;
        let topo = self.router.topology();
        let name = take_param(&mut params, "shard").ok_or(ApiError::MissingParam("shard"))?;
        let name = String::from_utf8_lossy(&name).into_owned();
        let shard = shard_named(topo, &name).ok_or(ApiError::BadParam("shard", "no such shard"))?;
        let to = match take_param(&mut params, "to") {
            None => None,
            Some(addr) => {
                let addr = String::from_utf8_lossy(&addr).into_owned();
                let node = topo
                    .nodes()
                    .find(|n| n.shard == shard && n.address == addr)
                    .ok_or(ApiError::BadParam(
                        "to",
                        "not the address of a node of that shard",
                    ))?;
                Some(node.id)
            }
        };
        let answer = outcome(control.request_promote(shard, to))
            .await
            .map_err(|e| switchover_error(&e))?;
        let node = topo.node(answer.node).map_or("?", |n| n.name.as_str());
        let address = topo.node(answer.node).map_or("?", |n| n.address.as_str());
        let body = serde_json::json!({
            "shard": name,
            "primary": node,
            "address": address,
            "epoch": answer.epoch,
        });
        let mut bytes = body.to_string().into_bytes();
        bytes.push(b'\n');
        Ok(Response::new(200, JSON, bytes))
    }
}

/// The status a failed switchover is answered with.
fn switchover_error(e: &ControlError) -> ApiError {
    let status = match e {
        ControlError::UnknownShard(_) | ControlError::UnknownNode(_) => 400,
        ControlError::Busy(_) | ControlError::Conflict(_) => 409,
        ControlError::Timeout(_) => 504,
        ControlError::NoPrimary(_)
        | ControlError::Etcd(_)
        | ControlError::Stopped
        | ControlError::Config(_)
        | ControlError::Spawn(_) => 503,
    };
    ApiError::Switchover {
        status,
        why: e.to_string(),
    }
}
