#!/usr/bin/env bash
# Builds the Engram image without a registry: the binary comes from the host
# (the same workspace build as ./x test), the base is imported from a root
# filesystem holding only that binary's shared libraries, /etc/passwd and CA
# certificates (what distroless cc provides), and the image itself is built
# from deployments/docker/Dockerfile's `runtime` stage, the stage users get.
# Also writes a CycloneDX SBOM of the binary's crates to
# $CARGO_TARGET_DIR/sbom/ (ENGRAM_SBOM=0 skips it).
#
# Nothing is written into the checkout (it may be read-only): the build
# context and the SBOM's workspace copy live in a scratch directory that is
# removed at exit. Rebuilding a tag removes the image it replaces (and the
# base that image was built on) unless a container still uses it; what is
# left behind is listed by `docker images -f dangling=true` and removed by
# `docker image prune -f` (BuildKit's cache: `docker builder prune -f`).
#
#   deployments/docker/build-local.sh            # image engram:local
#   ENGRAM_IMAGE=engram:dev deployments/docker/build-local.sh
#   ENGRAM_BINARY=/path/to/engram deployments/docker/build-local.sh
#                                                # package that binary, build nothing
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

if [ -n "${ENGRAM_BINARY:-}" ]; then
    bin="$ENGRAM_BINARY"
    [ -x "$bin" ] || { echo "ENGRAM_BINARY=$bin is not an executable file" >&2; exit 2; }
    say "packaging $bin (ENGRAM_BINARY; nothing is built)"
else
    say "building the engram binary (release, same feature set as ./x test)"
    cargo build --release --workspace --all-targets --quiet
    bin="$CARGO_TARGET_DIR/release/engram"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# The images these tags name now, removed once replaced (see the top).
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
old_image=$(image_id "$IMAGE")
old_base=$(image_id "$BASE")
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

say "staging the binary for the Dockerfile's prebuilt stage (scratch build context)"
# The prebuilt stage copies deployments/docker/prebuilt/ from the context:
# the context is a scratch directory holding only that.
context="$stage/context"
prebuilt="$context/deployments/docker/prebuilt"
mkdir -p "$prebuilt/data"
# The workspace binary keeps its symbol names for profiling; the image does not
# need them.
strip --strip-all -o "$prebuilt/engram" "$bin"

say "building $IMAGE from deployments/docker/Dockerfile (target runtime)"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
docker_build --quiet \
    --build-arg BINARY=prebuilt \
    --build-arg RUNTIME_BASE="$BASE" \
    --build-arg VERSION="$version" \
    --build-arg REVISION="$revision" \
    --target runtime -t "$IMAGE" -f deployments/docker/Dockerfile "$context" >/dev/null

# The replaced image first (it was built on the replaced base); one still
# used by a container stays, dangling.
for old in "$old_image" "$old_base"; do
    if [ -n "$old" ] && [ "$old" != "$(image_id "$IMAGE")" ] && [ "$old" != "$(image_id "$BASE")" ]; then
        if ! docker rmi "$old" >/dev/null 2>&1; then
            say "the replaced image ${old#sha256:} is still in use; remove it later with: docker image prune -f"
        fi
    fi
done

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
say "image $IMAGE: $((size / 1024 / 1024)) MiB ($size bytes)"

if [ "${ENGRAM_SBOM:-1}" = 1 ]; then
    if ! command -v cargo-cyclonedx >/dev/null 2>&1; then
        say "installing cargo-cyclonedx"
        cargo install cargo-cyclonedx --locked --quiet
    fi
    sbom_dir="$CARGO_TARGET_DIR/sbom"
    mkdir -p "$sbom_dir"
    # cargo-cyclonedx writes one SBOM next to each workspace member's
    # Cargo.toml, so it runs on a scratch copy of the workspace's tracked
    # files; the binary's (cmd/, which depends on every other crate) is kept.
    src="$stage/workspace"
    mkdir -p "$src"
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files -z --cached --others --exclude-standard |
            tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$src" -xf -
    else
        tar --exclude=./target --exclude=./engram-data --exclude=./.git -cf - . | tar -C "$src" -xf -
    fi
    cargo cyclonedx --manifest-path "$src/cmd/Cargo.toml" --format json --spec-version 1.5 \
        --override-filename engram.cdx --no-build-deps >/dev/null
    mv "$src/cmd/engram.cdx.json" "$sbom_dir/engram.cdx.json"
    components=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1])).get("components", [])))' "$sbom_dir/engram.cdx.json")
    say "SBOM: $sbom_dir/engram.cdx.json ($components components)"
fi
