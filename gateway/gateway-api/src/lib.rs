//! The Gateway API resources Portico reads (`gateway.networking.k8s.io/v1`,
//! release v1.6.1, standard channel).
//!
//! The spec and status types in `generated/` come from the release's CRDs
//! by kopium (`scripts/gen_gateway_api.sh`); they are not edited by hand.
//! The kube-rs `gateway-api` crate has the same types, but it is built on
//! other major versions of kube and k8s-openapi than the workspace's.
//!
//! The resources themselves are declared here with the k8s-openapi traits
//! (so kube's `Api`, watchers and reflectors take them as they take
//! built-in kinds) and serialise with their `apiVersion` and `kind`.

#![allow(clippy::all)]

#[path = "generated/gatewayclasses.rs"]
pub mod gatewayclasses;
#[path = "generated/gateways.rs"]
pub mod gateways;
#[path = "generated/grpcroutes.rs"]
pub mod grpcroutes;
#[path = "generated/httproutes.rs"]
pub mod httproutes;
#[path = "generated/referencegrants.rs"]
pub mod referencegrants;
#[path = "generated/tcproutes.rs"]
pub mod tcproutes;
#[path = "generated/tlsroutes.rs"]
pub mod tlsroutes;
#[path = "generated/udproutes.rs"]
pub mod udproutes;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// The API group of every kind here.
pub const GROUP: &str = "gateway.networking.k8s.io";

macro_rules! resource {
    ($(#[$doc:meta])* $name:ident, $spec:ty, $status:ty, $plural:literal, $scope:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Default, Deserialize)]
        pub struct $name {
            #[serde(default)]
            pub metadata: ObjectMeta,
            pub spec: $spec,
            #[serde(default)]
            pub status: Option<$status>,
        }

        impl k8s_openapi::Resource for $name {
            const API_VERSION: &'static str = "gateway.networking.k8s.io/v1";
            const GROUP: &'static str = GROUP;
            const KIND: &'static str = stringify!($name);
            const VERSION: &'static str = "v1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = $scope;
        }

        impl k8s_openapi::ListableResource for $name {
            const LIST_KIND: &'static str = concat!(stringify!($name), "List");
        }

        impl k8s_openapi::Metadata for $name {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                let mut st = s.serialize_struct(stringify!($name), 5)?;
                st.serialize_field("apiVersion", <$name as k8s_openapi::Resource>::API_VERSION)?;
                st.serialize_field("kind", stringify!($name))?;
                st.serialize_field("metadata", &self.metadata)?;
                st.serialize_field("spec", &self.spec)?;
                if let Some(status) = &self.status {
                    st.serialize_field("status", status)?;
                }
                st.end()
            }
        }
    };
}

resource!(
    /// Which controller implements a class of Gateways.
    GatewayClass,
    gatewayclasses::GatewayClassSpec,
    gatewayclasses::GatewayClassStatus,
    "gatewayclasses",
    k8s_openapi::ClusterResourceScope
);
resource!(
    /// Listeners (port, protocol, hostname, TLS) that routes attach to.
    Gateway,
    gateways::GatewaySpec,
    gateways::GatewayStatus,
    "gateways",
    k8s_openapi::NamespaceResourceScope
);
resource!(
    /// HTTP routing rules attached to Gateway listeners.
    HTTPRoute,
    httproutes::HttpRouteSpec,
    httproutes::HttpRouteStatus,
    "httproutes",
    k8s_openapi::NamespaceResourceScope
);
resource!(
    /// gRPC routing rules (by service and method) attached to Gateway
    /// listeners.
    GRPCRoute,
    grpcroutes::GrpcRouteSpec,
    grpcroutes::GrpcRouteStatus,
    "grpcroutes",
    k8s_openapi::NamespaceResourceScope
);
resource!(
    /// TCP connections on a Gateway listener to Services.
    TCPRoute,
    tcproutes::TcpRouteSpec,
    tcproutes::TcpRouteStatus,
    "tcproutes",
    k8s_openapi::NamespaceResourceScope
);
resource!(
    /// UDP datagrams on a Gateway listener to Services.
    UDPRoute,
    udproutes::UdpRouteSpec,
    udproutes::UdpRouteStatus,
    "udproutes",
    k8s_openapi::NamespaceResourceScope
);
resource!(
    /// TLS connections on a Gateway listener to Services by SNI, the TLS
    /// left to the backend (passthrough).
    TLSRoute,
    tlsroutes::TlsRouteSpec,
    tlsroutes::TlsRouteStatus,
    "tlsroutes",
    k8s_openapi::NamespaceResourceScope
);
resource!(
    /// Permission for objects of one namespace to refer to objects of
    /// another (a route to a Service, a Gateway to a Secret).
    ReferenceGrant,
    referencegrants::ReferenceGrantSpec,
    (),
    "referencegrants",
    k8s_openapi::NamespaceResourceScope
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_reads_and_writes_with_its_kind() {
        let text = r#"{"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute",
            "metadata":{"name":"r","namespace":"ns"},
            "spec":{"parentRefs":[{"name":"gw","sectionName":"http"}],
                    "rules":[{"matches":[{"path":{"type":"Exact","value":"/x"}}],
                              "backendRefs":[{"name":"svc","port":80,"weight":2}]}]}}"#;
        let r: HTTPRoute = serde_json::from_str(text).unwrap();
        let rule = &r.spec.rules.as_ref().unwrap()[0];
        assert_eq!(rule.backend_refs.as_ref().unwrap()[0].weight, Some(2));
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["kind"], "HTTPRoute");
        assert_eq!(back["apiVersion"], "gateway.networking.k8s.io/v1");
        let again: HTTPRoute = serde_json::from_value(back).unwrap();
        assert_eq!(again, r);
        assert_eq!(
            <HTTPRoute as k8s_openapi::Resource>::URL_PATH_SEGMENT,
            "httproutes"
        );
    }
}
