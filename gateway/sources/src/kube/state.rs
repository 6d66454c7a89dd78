//! The cluster state as the watchers report it, and what each change means
//! for translation: nothing, an endpoints-only refresh, or a full pass.
//!
//! Pure: the watchers turn API events into `Update`s, this module folds them
//! into the store; the source decides how to translate from the `Effect`.

use std::collections::BTreeSet;

use portico_model::store::{AnyObject, ObjectKey, Store};
use portico_translate::backend::SERVICE_NAME_LABEL;

/// The kinds watched into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Ingress,
    IngressClass,
    Secret,
    GatewayClass,
    Gateway,
    HTTPRoute,
    ReferenceGrant,
    GRPCRoute,
    TCPRoute,
    UDPRoute,
    TLSRoute,
    Namespace,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Ingress,
        Kind::IngressClass,
        Kind::Secret,
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::HTTPRoute,
        Kind::ReferenceGrant,
        Kind::GRPCRoute,
        Kind::TCPRoute,
        Kind::UDPRoute,
        Kind::TLSRoute,
        Kind::Namespace,
    ];

    /// The Gateway API kinds: watched only where their CRDs are installed.
    /// Namespaces go with Gateways: their labels feed listeners'
    /// `allowedRoutes` selectors, and nothing else reads them.
    pub const GATEWAY_API: [Kind; 9] = [
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::HTTPRoute,
        Kind::ReferenceGrant,
        Kind::GRPCRoute,
        Kind::TCPRoute,
        Kind::UDPRoute,
        Kind::TLSRoute,
        Kind::Namespace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Ingress => "Ingress",
            Kind::IngressClass => "IngressClass",
            Kind::Secret => "Secret",
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HTTPRoute => "HTTPRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::GRPCRoute => "GRPCRoute",
            Kind::TCPRoute => "TCPRoute",
            Kind::UDPRoute => "UDPRoute",
            Kind::TLSRoute => "TLSRoute",
            Kind::Namespace => "Namespace",
        }
    }

    pub fn of(obj: &AnyObject) -> Kind {
        match obj {
            AnyObject::Service(_) => Kind::Service,
            AnyObject::EndpointSlice(_) => Kind::EndpointSlice,
            AnyObject::Ingress(_) => Kind::Ingress,
            AnyObject::IngressClass(_) => Kind::IngressClass,
            AnyObject::Secret(_) => Kind::Secret,
            AnyObject::GatewayClass(_) => Kind::GatewayClass,
            AnyObject::Gateway(_) => Kind::Gateway,
            AnyObject::HTTPRoute(_) => Kind::HTTPRoute,
            AnyObject::ReferenceGrant(_) => Kind::ReferenceGrant,
            AnyObject::GRPCRoute(_) => Kind::GRPCRoute,
            AnyObject::TCPRoute(_) => Kind::TCPRoute,
            AnyObject::UDPRoute(_) => Kind::UDPRoute,
            AnyObject::TLSRoute(_) => Kind::TLSRoute,
            AnyObject::Namespace(_) => Kind::Namespace,
        }
    }
}

/// One change reported by a watcher.
#[derive(Debug, Clone)]
pub enum Update {
    /// A full (re)list of one kind: replaces every object of that kind.
    Reset(Kind, Vec<AnyObject>),
    /// A (re)list of one object by name (a watch with a `metadata.name`
    /// field selector): replaces that object only, and does not count as
    /// the kind's list.
    ResetOne(Kind, ObjectKey, Vec<AnyObject>),
    Apply(AnyObject),
    Delete(AnyObject),
}

/// What a batch of updates asks translation to do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Effect {
    #[default]
    Nothing,
    /// Only the EndpointSlices of these Services changed.
    Endpoints(BTreeSet<ObjectKey>),
    Full,
}

impl Effect {
    pub fn merge(&mut self, other: Effect) {
        *self = match (std::mem::take(self), other) {
            (Effect::Full, _) | (_, Effect::Full) => Effect::Full,
            (Effect::Nothing, e) | (e, Effect::Nothing) => e,
            (Effect::Endpoints(mut a), Effect::Endpoints(b)) => {
                a.extend(b);
                Effect::Endpoints(a)
            }
        };
    }
}

#[derive(Debug, Default)]
pub struct ClusterState {
    pub store: Store,
    synced: BTreeSet<Kind>,
}

impl ClusterState {
    /// True once every kind has been listed at least once.
    pub fn synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.synced.contains(k))
    }

    pub fn apply(&mut self, update: Update) -> Effect {
        match update {
            Update::Reset(kind, objects) => {
                self.synced.insert(kind);
                self.clear(kind);
                for o in objects {
                    self.store.insert(o, None);
                }
                Effect::Full
            }
            Update::ResetOne(kind, key, objects) => {
                let existed = self.remove(kind, &key);
                if !existed && objects.is_empty() {
                    return Effect::Nothing;
                }
                for o in objects.into_iter().filter(|o| o.key() == key) {
                    self.store.insert(o, None);
                }
                Effect::Full
            }
            Update::Apply(obj) => {
                let effect = self.effect_of_apply(&obj);
                self.store.insert(obj, None);
                effect
            }
            Update::Delete(obj) => {
                let key = obj.key();
                let existed = self.remove(Kind::of(&obj), &key);
                match (existed, &obj) {
                    (false, _) => Effect::Nothing,
                    (true, AnyObject::EndpointSlice(s)) => endpoints_of(&key, s),
                    (true, _) => Effect::Full,
                }
            }
        }
    }

    /// Drops one object the source stopped watching (a Secret no Ingress
    /// names any more); true when it was there.
    pub fn forget(&mut self, kind: Kind, key: &ObjectKey) -> bool {
        self.remove(kind, key)
    }

    fn clear(&mut self, kind: Kind) {
        let s = &mut self.store;
        match kind {
            Kind::Service => s.services.clear(),
            Kind::EndpointSlice => s.endpoint_slices.clear(),
            Kind::Ingress => s.ingresses.clear(),
            Kind::IngressClass => s.ingress_classes.clear(),
            Kind::Secret => s.secrets.clear(),
            Kind::GatewayClass => s.gateway_classes.clear(),
            Kind::Gateway => s.gateways.clear(),
            Kind::HTTPRoute => s.http_routes.clear(),
            Kind::ReferenceGrant => s.reference_grants.clear(),
            Kind::GRPCRoute => s.grpc_routes.clear(),
            Kind::TCPRoute => s.tcp_routes.clear(),
            Kind::UDPRoute => s.udp_routes.clear(),
            Kind::TLSRoute => s.tls_routes.clear(),
            Kind::Namespace => s.namespaces.clear(),
        }
    }

    fn remove(&mut self, kind: Kind, key: &ObjectKey) -> bool {
        let s = &mut self.store;
        match kind {
            Kind::Service => s.services.remove(key).is_some(),
            Kind::EndpointSlice => s.endpoint_slices.remove(key).is_some(),
            Kind::Ingress => s.ingresses.remove(key).is_some(),
            Kind::IngressClass => s.ingress_classes.remove(key).is_some(),
            Kind::Secret => s.secrets.remove(key).is_some(),
            Kind::GatewayClass => s.gateway_classes.remove(key).is_some(),
            Kind::Gateway => s.gateways.remove(key).is_some(),
            Kind::HTTPRoute => s.http_routes.remove(key).is_some(),
            Kind::ReferenceGrant => s.reference_grants.remove(key).is_some(),
            Kind::GRPCRoute => s.grpc_routes.remove(key).is_some(),
            Kind::TCPRoute => s.tcp_routes.remove(key).is_some(),
            Kind::UDPRoute => s.udp_routes.remove(key).is_some(),
            Kind::TLSRoute => s.tls_routes.remove(key).is_some(),
            Kind::Namespace => s.namespaces.remove(key).is_some(),
        }
    }

    /// Status-only updates (our own status writes come back this way) and
    /// resyncs of unchanged objects cost nothing; EndpointSlice changes
    /// cost their Services only.
    fn effect_of_apply(&self, obj: &AnyObject) -> Effect {
        let key = obj.key();
        let s = &self.store;
        match obj {
            AnyObject::EndpointSlice(new) => {
                let mut e = endpoints_of(&key, new);
                if let Some(old) = s.endpoint_slices.get(&key) {
                    if old.object.endpoints == new.endpoints
                        && old.object.ports == new.ports
                        && old.object.address_type == new.address_type
                        && old.object.metadata.labels == new.metadata.labels
                    {
                        return Effect::Nothing;
                    }
                    e.merge(endpoints_of(&key, &old.object));
                }
                e
            }
            AnyObject::Ingress(new) => match s.ingresses.get(&key) {
                Some(old)
                    if old.object.spec == new.spec
                        && old.object.metadata.annotations == new.metadata.annotations
                        && old.object.metadata.creation_timestamp
                            == new.metadata.creation_timestamp =>
                {
                    Effect::Nothing
                }
                _ => Effect::Full,
            },
            AnyObject::Secret(new) => match s.secrets.get(&key) {
                Some(old)
                    if old.object.data == new.data
                        && old.object.string_data == new.string_data
                        && old.object.type_ == new.type_ =>
                {
                    Effect::Nothing
                }
                _ => Effect::Full,
            },
            AnyObject::Service(new) => match s.services.get(&key) {
                Some(old)
                    if old.object.spec == new.spec
                        && old.object.status == new.status
                        && old.object.metadata.annotations == new.metadata.annotations =>
                {
                    Effect::Nothing
                }
                _ => Effect::Full,
            },
            AnyObject::IngressClass(new) => match s.ingress_classes.get(&key) {
                Some(old)
                    if old.object.spec == new.spec
                        && old.object.metadata.annotations == new.metadata.annotations =>
                {
                    Effect::Nothing
                }
                _ => Effect::Full,
            },
            // Our own status writes come back as updates: only a spec,
            // label or age change is translated again. Labels count: a
            // ReferenceGrant or listener selector may read them.
            AnyObject::GatewayClass(new) => {
                same_spec(s.gateway_classes.get(&key).map(|o| &*o.object), new, |o| {
                    (&o.metadata, &o.spec)
                })
            }
            // A Gateway's status addresses count too: those a load-balancer
            // plugin gave it are its own (translation reads them back).
            AnyObject::Gateway(new) => {
                let old = s.gateways.get(&key).map(|o| &*o.object);
                let addresses = |g: &portico_gateway_api::Gateway| {
                    g.status.as_ref().and_then(|st| st.addresses.clone())
                };
                match same_spec(old, new, |o| (&o.metadata, &o.spec)) {
                    Effect::Nothing if old.map(addresses) != Some(addresses(new)) => Effect::Full,
                    effect => effect,
                }
            }
            AnyObject::HTTPRoute(new) => {
                same_spec(s.http_routes.get(&key).map(|o| &*o.object), new, |o| {
                    (&o.metadata, &o.spec)
                })
            }
            AnyObject::ReferenceGrant(new) => {
                same_spec(s.reference_grants.get(&key).map(|o| &*o.object), new, |o| {
                    (&o.metadata, &o.spec)
                })
            }
            AnyObject::GRPCRoute(new) => {
                same_spec(s.grpc_routes.get(&key).map(|o| &*o.object), new, |o| {
                    (&o.metadata, &o.spec)
                })
            }
            AnyObject::TCPRoute(new) => {
                same_spec(s.tcp_routes.get(&key).map(|o| &*o.object), new, |o| {
                    (&o.metadata, &o.spec)
                })
            }
            AnyObject::UDPRoute(new) => {
                same_spec(s.udp_routes.get(&key).map(|o| &*o.object), new, |o| {
                    (&o.metadata, &o.spec)
                })
            }
            // Only labels matter (listener namespace selectors).
            AnyObject::Namespace(new) => match s.namespaces.get(&key) {
                Some(old) if old.object.metadata.labels == new.metadata.labels => Effect::Nothing,
                _ => Effect::Full,
            },
            AnyObject::TLSRoute(new) => {
                same_spec(s.tls_routes.get(&key).map(|o| &*o.object), new, |o| {
                    (&o.metadata, &o.spec)
                })
            }
        }
    }
}

/// `Nothing` when `new` differs from `old` in status and bookkeeping
/// metadata only.
fn same_spec<T, S: PartialEq>(
    old: Option<&T>,
    new: &T,
    parts: impl Fn(
        &T,
    ) -> (
        &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        &S,
    ),
) -> Effect {
    let Some(old) = old else {
        return Effect::Full;
    };
    let ((om, os), (nm, ns)) = (parts(old), parts(new));
    if os == ns
        && om.labels == nm.labels
        && om.annotations == nm.annotations
        && om.creation_timestamp == nm.creation_timestamp
        && om.generation == nm.generation
    {
        Effect::Nothing
    } else {
        Effect::Full
    }
}

/// The Service an EndpointSlice belongs to; a slice without the label is
/// read by nothing.
fn endpoints_of(key: &ObjectKey, slice: &k8s_openapi::api::discovery::v1::EndpointSlice) -> Effect {
    match slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
    {
        Some(svc) => Effect::Endpoints(BTreeSet::from([ObjectKey::new(
            key.namespace.clone(),
            svc.clone(),
        )])),
        None => Effect::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn obj(yaml: &str) -> AnyObject {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        match v["kind"].as_str().unwrap() {
            "Service" => AnyObject::Service(Arc::new(serde_yaml::from_value(v).unwrap())),
            "EndpointSlice" => {
                AnyObject::EndpointSlice(Arc::new(serde_yaml::from_value(v).unwrap()))
            }
            "Ingress" => AnyObject::Ingress(Arc::new(serde_yaml::from_value(v).unwrap())),
            "Secret" => AnyObject::Secret(Arc::new(serde_yaml::from_value(v).unwrap())),
            "Gateway" => AnyObject::Gateway(Arc::new(serde_yaml::from_value(v).unwrap())),
            k => panic!("{k}"),
        }
    }

    fn slice(name: &str, svc: &str, ip: &str) -> AnyObject {
        obj(&format!(
            "kind: EndpointSlice\napiVersion: discovery.k8s.io/v1\nmetadata: {{name: {name}, namespace: ns, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [\"{ip}\"]}}]\n"
        ))
    }

    fn synced() -> ClusterState {
        let mut st = ClusterState::default();
        for k in Kind::ALL {
            st.apply(Update::Reset(k, vec![]));
        }
        st
    }

    fn services(names: &[&str]) -> Effect {
        Effect::Endpoints(names.iter().map(|n| ObjectKey::new("ns", *n)).collect())
    }

    #[test]
    fn synced_only_after_every_kind_listed() {
        let mut st = ClusterState::default();
        let (last, rest) = Kind::ALL.split_last().unwrap();
        for k in rest {
            st.apply(Update::Reset(*k, vec![]));
            assert!(!st.synced());
        }
        st.apply(Update::Reset(*last, vec![]));
        assert!(st.synced());
    }

    #[test]
    fn slice_changes_touch_only_their_services() {
        let mut st = synced();
        assert_eq!(
            st.apply(Update::Apply(slice("a-1", "a", "10.0.0.1"))),
            services(&["a"])
        );
        // Same content again (a resync): nothing to do.
        assert_eq!(
            st.apply(Update::Apply(slice("a-1", "a", "10.0.0.1"))),
            Effect::Nothing
        );
        // Moved to another Service: both are refreshed.
        assert_eq!(
            st.apply(Update::Apply(slice("a-1", "b", "10.0.0.1"))),
            services(&["a", "b"])
        );
        assert_eq!(
            st.apply(Update::Delete(slice("a-1", "b", "10.0.0.1"))),
            services(&["b"])
        );
        assert!(st.store.endpoint_slices.is_empty());
        // Deleting what is not there changes nothing.
        assert_eq!(
            st.apply(Update::Delete(slice("a-1", "b", "10.0.0.1"))),
            Effect::Nothing
        );
    }

    #[test]
    fn ingress_status_only_update_is_free_but_spec_change_is_not() {
        let mut st = synced();
        let ing = "kind: Ingress\napiVersion: networking.k8s.io/v1\nmetadata: {name: i, namespace: ns}\nspec: {defaultBackend: {service: {name: a, port: {number: 80}}}}\n";
        assert_eq!(st.apply(Update::Apply(obj(ing))), Effect::Full);
        let with_status =
            format!("{ing}status: {{loadBalancer: {{ingress: [{{ip: \"192.0.2.1\"}}]}}}}\n");
        assert_eq!(st.apply(Update::Apply(obj(&with_status))), Effect::Nothing);
        let changed = ing.replace("number: 80", "number: 81");
        assert_eq!(st.apply(Update::Apply(obj(&changed))), Effect::Full);
    }

    #[test]
    fn a_gateways_status_counts_only_for_its_addresses() {
        let mut st = synced();
        let gw = "kind: Gateway\napiVersion: gateway.networking.k8s.io/v1\nmetadata: {name: g, namespace: ns}\nspec: {gatewayClassName: c, listeners: [{name: h, protocol: HTTP, port: 80}]}\n";
        assert_eq!(st.apply(Update::Apply(obj(gw))), Effect::Full);
        let status =
            |addresses: &str| format!("{gw}status: {{conditions: [], addresses: [{addresses}]}}\n");
        // New addresses (an allocation written back): translated again.
        let one = status("{type: IPAddress, value: 192.0.2.7}");
        assert_eq!(st.apply(Update::Apply(obj(&one))), Effect::Full);
        // Conditions only: nothing to do.
        let conditions = one.replace(
            "conditions: []",
            "conditions: [{type: Accepted, status: 'True', reason: Accepted, message: m, lastTransitionTime: '2026-12-01T00:00:00Z'}]",
        );
        assert_eq!(st.apply(Update::Apply(obj(&conditions))), Effect::Nothing);
    }

    #[test]
    fn effects_merge_with_full_winning() {
        let mut e = Effect::Nothing;
        e.merge(services(&["a"]));
        e.merge(services(&["b"]));
        assert_eq!(e, services(&["a", "b"]));
        e.merge(Effect::Full);
        e.merge(services(&["c"]));
        assert_eq!(e, Effect::Full);
    }

    fn secret(name: &str, cert: &str) -> AnyObject {
        obj(&format!(
            "kind: Secret\napiVersion: v1\nmetadata: {{name: {name}, namespace: ns}}\ntype: kubernetes.io/tls\nstringData: {{tls.crt: \"{cert}\", tls.key: k}}\n"
        ))
    }

    #[test]
    fn reset_one_replaces_one_object_and_leaves_the_kind_unlisted() {
        let mut st = ClusterState::default();
        for k in &Kind::ALL[..4] {
            st.apply(Update::Reset(*k, vec![]));
        }
        let a = ObjectKey::new("ns", "a");
        let b = ObjectKey::new("ns", "b");
        assert_eq!(
            st.apply(Update::ResetOne(
                Kind::Secret,
                a.clone(),
                vec![secret("a", "1")]
            )),
            Effect::Full
        );
        assert!(!st.synced(), "a watch by name is not the kind's list");
        st.apply(Update::ResetOne(
            Kind::Secret,
            b.clone(),
            vec![secret("b", "1")],
        ));
        // Relisting `a` empty removes `a` only.
        assert_eq!(
            st.apply(Update::ResetOne(Kind::Secret, a.clone(), vec![])),
            Effect::Full
        );
        let keys: Vec<_> = st.store.secrets.keys().cloned().collect();
        assert_eq!(keys, vec![b.clone()]);
        // Still absent: nothing to do.
        assert_eq!(
            st.apply(Update::ResetOne(Kind::Secret, a.clone(), vec![])),
            Effect::Nothing
        );
        // An object of another name in the answer is not taken.
        st.apply(Update::ResetOne(Kind::Secret, a, vec![secret("c", "1")]));
        assert!(!st.store.secrets.contains_key(&ObjectKey::new("ns", "c")));
        assert!(st.forget(Kind::Secret, &b));
        assert!(!st.forget(Kind::Secret, &b));
    }

    #[test]
    fn reset_replaces_the_kind() {
        let mut st = synced();
        st.apply(Update::Apply(slice("a-1", "a", "10.0.0.1")));
        st.apply(Update::Reset(
            Kind::EndpointSlice,
            vec![slice("b-1", "b", "10.0.0.2")],
        ));
        let keys: Vec<_> = st.store.endpoint_slices.keys().cloned().collect();
        assert_eq!(keys, vec![ObjectKey::new("ns", "b-1")]);
    }
}
