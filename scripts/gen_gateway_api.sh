#!/usr/bin/env bash
# Regenerates gateway/gateway-api/src/generated/ from the Gateway API CRDs
# of one release, with kopium:
#   cargo install kopium --version 0.24.1
#   scripts/gen_gateway_api.sh DIR v1.6.1
# where DIR holds config/crd/ of the gateway-api release
# (kubernetes-sigs/gateway-api, the tag given). Every kind comes from the
# standard channel but HTTPRoute and GRPCRoute, which come from the
# experimental one: a superset of the standard schema that adds the fields
# Portico implements beyond it (rules[].sessionPersistence). Standard-
# channel routes read the same through these types. Only the spec and status
# types are generated; the resources themselves (metadata, spec, status
# and the Kubernetes traits) are declared in gateway/gateway-api/src/lib.rs.
set -euo pipefail
crds="$1/config/crd"
release="$2"
out="$(dirname "$0")/../gateway/gateway-api/src/generated"
mkdir -p "$out"
for kind in gatewayclasses gateways httproutes grpcroutes referencegrants tcproutes udproutes tlsroutes; do
  channel=standard
  case "$kind" in httproutes|grpcroutes) channel=experimental ;; esac
  {
    echo "// Generated from the Gateway API $release CRD ($channel channel) by"
    echo "// scripts/gen_gateway_api.sh; do not edit."
    kopium -f "$crds/$channel/gateway.networking.k8s.io_$kind.yaml" --api-version v1 --hide-kube \
      --derive PartialEq --derive Default --smart-derive-elision
  } > "$out/$kind.rs"
done
# As `cargo fmt` keeps them.
rustfmt --edition 2021 "$out"/*.rs
