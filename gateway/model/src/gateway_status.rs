//! What translation found about Gateway API objects, in the shape of
//! their status conditions: the status writer copies it to the API, and
//! `/config` shows it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::store::ObjectKey;

/// One status condition: `type`, whether it holds, `reason`, `message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub fn ok(type_: &str, reason: &str, message: &str) -> Self {
        Condition {
            type_: type_.into(),
            status: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn bad(type_: &str, reason: &str, message: &str) -> Self {
        Condition {
            status: false,
            ..Condition::ok(type_, reason, message)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerState {
    pub accepted: Condition,
    pub programmed: Condition,
    pub resolved_refs: Condition,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflicted: Option<Condition>,
    pub attached_routes: u32,
    /// The route kinds the listener takes (`supportedKinds`).
    pub supported_kinds: Vec<String>,
}

impl Default for ListenerState {
    fn default() -> Self {
        ListenerState {
            accepted: Condition::ok("Accepted", "Accepted", "served"),
            programmed: Condition::ok("Programmed", "Programmed", "served"),
            resolved_refs: Condition::ok("ResolvedRefs", "ResolvedRefs", "all references resolved"),
            conflicted: None,
            attached_routes: 0,
            supported_kinds: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GatewayState {
    /// By listener name.
    pub listeners: BTreeMap<String, ListenerState>,
    /// `spec.addresses` asked for an address type other than
    /// `IPAddress`, or for a value that is not an IP address.
    pub addresses_unsupported: bool,
    /// `spec.infrastructure.parametersRef` names parameters Portico does
    /// not take (`Accepted=False, InvalidParameters`): why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid_parameters: Option<String>,
    /// `spec.addresses`' IP addresses that Portico serves the Gateway at:
    /// its status addresses, when any were asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub assigned_addresses: Vec<std::net::IpAddr>,
    /// For a Gateway that asks for none, the addresses a load-balancer
    /// plugin gave it, as found in its status (inside announce pools open
    /// to Gateways): served and announced as its own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allocated_addresses: Vec<std::net::IpAddr>,
    /// Those it does not serve (`Programmed=False, AddressNotUsable`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unassigned_addresses: Vec<std::net::IpAddr>,
}

/// A route's status for one parentRef.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentState {
    /// The parentRef as the status repeats it.
    pub gateway: ObjectKey,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    pub accepted: Condition,
    pub resolved_refs: Condition,
}

impl ParentState {
    pub fn new(gateway: ObjectKey, section_name: Option<String>, port: Option<i32>) -> Self {
        ParentState {
            gateway,
            section_name,
            port,
            accepted: Condition::ok("Accepted", "Accepted", "attached"),
            resolved_refs: Condition::ok("ResolvedRefs", "ResolvedRefs", "all references resolved"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GatewayApiStatus {
    /// Portico's GatewayClasses by name, with their `Accepted` condition.
    pub classes: BTreeMap<String, Condition>,
    /// The Gateways of those classes.
    pub gateways: BTreeMap<ObjectKey, GatewayState>,
    /// HTTPRoutes by key, then by parentRef (`ns/gateway[/section][:port]`).
    pub routes: BTreeMap<ObjectKey, BTreeMap<String, ParentState>>,
    /// GRPCRoutes, TCPRoutes, UDPRoutes and TLSRoutes, likewise.
    pub grpc_routes: BTreeMap<ObjectKey, BTreeMap<String, ParentState>>,
    pub tcp_routes: BTreeMap<ObjectKey, BTreeMap<String, ParentState>>,
    pub udp_routes: BTreeMap<ObjectKey, BTreeMap<String, ParentState>>,
    pub tls_routes: BTreeMap<ObjectKey, BTreeMap<String, ParentState>>,
}
