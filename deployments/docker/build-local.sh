#!/usr/bin/env bash
# Builds the Engram image without a registry: the binary comes from the host
# (the same workspace build as ./x test), the base is imported from a root
# filesystem holding only that binary's shared libraries, /etc/passwd and CA
# certificates (what distroless cc provides), and the image itself is built
# from deployments/docker/Dockerfile's `runtime` stage, the stage users get.
# Also writes a CycloneDX SBOM of the binary's crates.
#
#   deployments/docker/build-local.sh            # image engram:local
#   ENGRAM_IMAGE=engram:dev deployments/docker/build-local.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE="${ENGRAM_IMAGE:-engram:local}"
BASE="${ENGRAM_RUNTIME_BASE:-engram-runtime-base:local}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram/target}"
say() { printf '==> %s\n' "$*"; }

# BuildKit builds only the stages the target needs, so the Rust stages (and
# their base image) are never touched. Newer docker CLIs need the buildx
# plugin for it; Debian's docker.io 20.10 client has it built in.
docker_build() {
    if docker buildx version >/dev/null 2>&1; then
        DOCKER_BUILDKIT=1 docker build "$@"
    elif [ -x /usr/bin/docker ] && /usr/bin/docker version --format '{{.Client.Version}}' 2>/dev/null | grep -q '^20\.10'; then
        DOCKER_BUILDKIT=1 /usr/bin/docker build "$@"
    else
        echo "build-local.sh needs BuildKit: install the docker buildx plugin" >&2
        return 1
    fi
}

say "building the engram binary (release, same feature set as ./x test)"
cargo build --release --workspace --all-targets --quiet
bin="$CARGO_TARGET_DIR/release/engram"

stage=$(mktemp -d)
trap 'rm -rf "$stage" deployments/docker/prebuilt' EXIT
root="$stage/rootfs"
mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
# Every shared library the binary loads, under the path the loader looks in.
for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
chmod 1777 "$root/tmp"
say "importing the runtime base $BASE (no registry)"
# The home directory belongs to nonroot, as in distroless.
tar -C "$root" --numeric-owner --owner=0 --group=0 --exclude=./home -c . >"$stage/base.tar"
tar -C "$root" --numeric-owner --owner=65532 --group=65532 -rf "$stage/base.tar" ./home
docker import --change 'USER 65532:65532' "$stage/base.tar" "$BASE" >/dev/null

say "staging the binary for the Dockerfile's prebuilt stage"
rm -rf deployments/docker/prebuilt
mkdir -p deployments/docker/prebuilt/data
# The workspace binary keeps its symbol names for profiling; the image does not
# need them.
strip --strip-all -o deployments/docker/prebuilt/engram "$bin"

say "building $IMAGE from deployments/docker/Dockerfile (target runtime)"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
docker_build --quiet \
    --build-arg BINARY=prebuilt \
    --build-arg RUNTIME_BASE="$BASE" \
    --build-arg VERSION="$version" \
    --build-arg REVISION="$revision" \
    --target runtime -t "$IMAGE" -f deployments/docker/Dockerfile . >/dev/null
rm -rf deployments/docker/prebuilt

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
say "image $IMAGE: $((size / 1024 / 1024)) MiB ($size bytes)"

if [ "${ENGRAM_SBOM:-1}" = 1 ]; then
    if ! command -v cargo-cyclonedx >/dev/null 2>&1; then
        say "installing cargo-cyclonedx"
        cargo install cargo-cyclonedx --locked --quiet
    fi
    sbom_dir="$CARGO_TARGET_DIR/sbom"
    mkdir -p "$sbom_dir"
    # One SBOM per workspace member is written next to its Cargo.toml; the
    # binary's (cmd/, which depends on every other crate) is the one kept.
    cargo cyclonedx --manifest-path cmd/Cargo.toml --format json --spec-version 1.5 \
        --override-filename engram.cdx --no-build-deps >/dev/null
    mv cmd/engram.cdx.json "$sbom_dir/engram.cdx.json"
    rm -f wal/engram.cdx.json lsm/engram.cdx.json graph/engram.cdx.json api/engram.cdx.json bench/engram.cdx.json
    components=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1])).get("components", [])))' "$sbom_dir/engram.cdx.json")
    say "SBOM: $sbom_dir/engram.cdx.json ($components components)"
fi
