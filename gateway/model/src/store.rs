//! The object store: typed Kubernetes objects as the sources see them.
//!
//! Every source (manifest folders now, the API server later) fills the same
//! store, so translation does not know where an object came from except for
//! the `origin` it quotes in problems.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use portico_gateway_api::{
    GRPCRoute, Gateway, GatewayClass, HTTPRoute, ReferenceGrant, TCPRoute, TLSRoute, UDPRoute,
};

/// `namespace/name`; the namespace is empty for cluster-scoped kinds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl serde::Serialize for ObjectKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// An object and where it was read (`file:line`), if from a file.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    pub object: Arc<T>,
    pub origin: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Store {
    pub services: BTreeMap<ObjectKey, Stored<Service>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Stored<EndpointSlice>>,
    pub ingresses: BTreeMap<ObjectKey, Stored<Ingress>>,
    pub ingress_classes: BTreeMap<ObjectKey, Stored<IngressClass>>,
    pub secrets: BTreeMap<ObjectKey, Stored<Secret>>,
    pub gateway_classes: BTreeMap<ObjectKey, Stored<GatewayClass>>,
    pub gateways: BTreeMap<ObjectKey, Stored<Gateway>>,
    pub http_routes: BTreeMap<ObjectKey, Stored<HTTPRoute>>,
    pub reference_grants: BTreeMap<ObjectKey, Stored<ReferenceGrant>>,
    pub grpc_routes: BTreeMap<ObjectKey, Stored<GRPCRoute>>,
    pub tcp_routes: BTreeMap<ObjectKey, Stored<TCPRoute>>,
    pub udp_routes: BTreeMap<ObjectKey, Stored<UDPRoute>>,
    pub tls_routes: BTreeMap<ObjectKey, Stored<TLSRoute>>,
    /// By name (empty namespace); their labels are what Gateway
    /// listeners' namespace selectors read.
    pub namespaces: BTreeMap<ObjectKey, Stored<Namespace>>,
}

/// One object of any kind the gateway reads. Shared, not copied: the
/// parsed files and the store hold the same allocation.
#[derive(Debug, Clone)]
pub enum AnyObject {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Ingress(Arc<Ingress>),
    IngressClass(Arc<IngressClass>),
    Secret(Arc<Secret>),
    GatewayClass(Arc<GatewayClass>),
    Gateway(Arc<Gateway>),
    HTTPRoute(Arc<HTTPRoute>),
    ReferenceGrant(Arc<ReferenceGrant>),
    GRPCRoute(Arc<GRPCRoute>),
    TCPRoute(Arc<TCPRoute>),
    UDPRoute(Arc<UDPRoute>),
    TLSRoute(Arc<TLSRoute>),
    Namespace(Arc<Namespace>),
}

impl AnyObject {
    pub fn kind(&self) -> &'static str {
        match self {
            AnyObject::Service(_) => "Service",
            AnyObject::EndpointSlice(_) => "EndpointSlice",
            AnyObject::Ingress(_) => "Ingress",
            AnyObject::IngressClass(_) => "IngressClass",
            AnyObject::Secret(_) => "Secret",
            AnyObject::GatewayClass(_) => "GatewayClass",
            AnyObject::Gateway(_) => "Gateway",
            AnyObject::HTTPRoute(_) => "HTTPRoute",
            AnyObject::ReferenceGrant(_) => "ReferenceGrant",
            AnyObject::GRPCRoute(_) => "GRPCRoute",
            AnyObject::TCPRoute(_) => "TCPRoute",
            AnyObject::UDPRoute(_) => "UDPRoute",
            AnyObject::TLSRoute(_) => "TLSRoute",
            AnyObject::Namespace(_) => "Namespace",
        }
    }

    fn metadata(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            AnyObject::Service(o) => &o.metadata,
            AnyObject::EndpointSlice(o) => &o.metadata,
            AnyObject::Ingress(o) => &o.metadata,
            AnyObject::IngressClass(o) => &o.metadata,
            AnyObject::Secret(o) => &o.metadata,
            AnyObject::GatewayClass(o) => &o.metadata,
            AnyObject::Gateway(o) => &o.metadata,
            AnyObject::HTTPRoute(o) => &o.metadata,
            AnyObject::ReferenceGrant(o) => &o.metadata,
            AnyObject::GRPCRoute(o) => &o.metadata,
            AnyObject::TCPRoute(o) => &o.metadata,
            AnyObject::UDPRoute(o) => &o.metadata,
            AnyObject::TLSRoute(o) => &o.metadata,
            AnyObject::Namespace(o) => &o.metadata,
        }
    }

    pub fn is_namespaced(&self) -> bool {
        !matches!(
            self,
            AnyObject::IngressClass(_) | AnyObject::GatewayClass(_) | AnyObject::Namespace(_)
        )
    }

    /// The key, with `default` for a namespaced object that names none.
    pub fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        let ns = if self.is_namespaced() {
            meta.namespace.clone().unwrap_or_else(|| "default".into())
        } else {
            String::new()
        };
        ObjectKey::new(ns, meta.name.clone().unwrap_or_default())
    }

    pub fn set_namespace_default(&mut self) {
        if !self.is_namespaced() {
            return;
        }
        // Called right after parsing, while the object is not shared yet.
        let meta = match self {
            AnyObject::Service(o) => &mut Arc::make_mut(o).metadata,
            AnyObject::EndpointSlice(o) => &mut Arc::make_mut(o).metadata,
            AnyObject::Ingress(o) => &mut Arc::make_mut(o).metadata,
            AnyObject::IngressClass(o) => &mut Arc::make_mut(o).metadata,
            AnyObject::Secret(o) => &mut Arc::make_mut(o).metadata,
            AnyObject::GatewayClass(o) => &mut Arc::make_mut(o).metadata,
            AnyObject::Gateway(o) => &mut Arc::make_mut(o).metadata,
            AnyObject::HTTPRoute(o) => &mut Arc::make_mut(o).metadata,
            AnyObject::ReferenceGrant(o) => &mut Arc::make_mut(o).metadata,
            AnyObject::GRPCRoute(o) => &mut Arc::make_mut(o).metadata,
            AnyObject::TCPRoute(o) => &mut Arc::make_mut(o).metadata,
            AnyObject::UDPRoute(o) => &mut Arc::make_mut(o).metadata,
            AnyObject::TLSRoute(o) => &mut Arc::make_mut(o).metadata,
            AnyObject::Namespace(o) => &mut Arc::make_mut(o).metadata,
        };
        if meta.namespace.is_none() {
            meta.namespace = Some("default".into());
        }
    }
}

impl Store {
    /// Inserts an object; returns the origin of the object it replaced, if any.
    pub fn insert(&mut self, obj: AnyObject, origin: Option<String>) -> Option<Option<String>> {
        let key = obj.key();
        fn put<T>(
            map: &mut BTreeMap<ObjectKey, Stored<T>>,
            key: ObjectKey,
            object: Arc<T>,
            origin: Option<String>,
        ) -> Option<Option<String>> {
            map.insert(key, Stored { object, origin })
                .map(|old| old.origin)
        }
        match obj {
            AnyObject::Service(o) => put(&mut self.services, key, o, origin),
            AnyObject::EndpointSlice(o) => put(&mut self.endpoint_slices, key, o, origin),
            AnyObject::Ingress(o) => put(&mut self.ingresses, key, o, origin),
            AnyObject::IngressClass(o) => put(&mut self.ingress_classes, key, o, origin),
            AnyObject::Secret(o) => put(&mut self.secrets, key, o, origin),
            AnyObject::GatewayClass(o) => put(&mut self.gateway_classes, key, o, origin),
            AnyObject::Gateway(o) => put(&mut self.gateways, key, o, origin),
            AnyObject::HTTPRoute(o) => put(&mut self.http_routes, key, o, origin),
            AnyObject::ReferenceGrant(o) => put(&mut self.reference_grants, key, o, origin),
            AnyObject::GRPCRoute(o) => put(&mut self.grpc_routes, key, o, origin),
            AnyObject::TCPRoute(o) => put(&mut self.tcp_routes, key, o, origin),
            AnyObject::UDPRoute(o) => put(&mut self.udp_routes, key, o, origin),
            AnyObject::TLSRoute(o) => put(&mut self.tls_routes, key, o, origin),
            AnyObject::Namespace(o) => put(&mut self.namespaces, key, o, origin),
        }
    }

    /// Where an object is named in problems: its file:line when it has one.
    pub fn locate<T>(map: &BTreeMap<ObjectKey, Stored<T>>, kind: &str, key: &ObjectKey) -> String {
        match map.get(key).and_then(|s| s.origin.clone()) {
            Some(origin) => format!("{origin}: {kind} {key}"),
            None => format!("{kind} {key}"),
        }
    }
}
