# Shared by bench/*.sh (source it after `cd` to the repository root):
# builds the release binary and starts one Engram server on loopback with
# a scratch data directory, removed at exit.
#
# After `start_engram`: $bin, $work (scratch dir), $pid, $url, $grpc (port).

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram/target}"
cargo build --release --workspace --all-targets --quiet
bin="$CARGO_TARGET_DIR/release/engram"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_engram() {
    work=$(mktemp -d)
    local port
    port=$(free_port)
    grpc=$(free_port)
    url="http://127.0.0.1:$port"
    "$bin" start --data-dir "$work/data" --http-port "$port" --grpc-port "$grpc" 2>"$work/log" &
    pid=$!
    trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
    for _ in $(seq 1 300); do # at most 30 s
        curl -sf "$url/health/ready" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "engram did not become ready within 30 s" >&2
    cat "$work/log" >&2
    return 1
}
