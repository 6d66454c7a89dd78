#!/usr/bin/env bash
# Regenerates gateway/gateway-api/src/generated/ from the Gateway API CRDs
# of one release (the standard channel), with kopium:
#   cargo install kopium --version 0.24.1
#   scripts/gen_gateway_api.sh DIR v1.6.1
# where DIR holds config/crd/standard/ of the gateway-api release
# (kubernetes-sigs/gateway-api, the tag given). Only the spec and status
# types are generated; the resources themselves (metadata, spec, status
# and the Kubernetes traits) are declared in gateway/gateway-api/src/lib.rs.
set -euo pipefail
crds="$1/config/crd/standard"
release="$2"
out="$(dirname "$0")/../gateway/gateway-api/src/generated"
mkdir -p "$out"
for kind in gatewayclasses gateways httproutes grpcroutes referencegrants tcproutes udproutes tlsroutes; do
  {
    echo "// Generated from the Gateway API $release CRD (standard channel) by"
    echo "// scripts/gen_gateway_api.sh; do not edit."
    kopium -f "$crds/gateway.networking.k8s.io_$kind.yaml" --api-version v1 --hide-kube \
      --derive PartialEq --derive Default --smart-derive-elision
  } > "$out/$kind.rs"
done
# As `cargo fmt` keeps them.
rustfmt --edition 2021 "$out"/*.rs
