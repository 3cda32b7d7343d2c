# Shared setup for scripts/hello and scripts/test: installs what weir's build
# and tests need, so both work on a fresh machine. Source it; do not run it.

# The guest target for WebAssembly components.
ensure_wasm_target() {
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        echo "==> installing the wasm32-wasip2 target"
        rustup target add wasm32-wasip2
    fi
}

# NATS with JetStream on 127.0.0.1:4222, for the tests that scale out on it.
ensure_nats() {
    if (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
        return
    fi
    if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
        echo "==> installing nats-server"
        apt-get update -qq && apt-get install -y -qq nats-server
    fi
    echo "==> starting nats-server with JetStream on 127.0.0.1:4222"
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server || echo /usr/sbin/nats-server)" -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    for _ in $(seq 1 50); do
        (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && return
        sleep 0.1
    done
    echo "nats-server did not start; see /var/log/nats-server.log" >&2
    return 1
}

# Programs the end-to-end tests drive beside weir: python3 (the Python
# producer example, an HTTPS client), openssl (a test certificate) and tmux
# (a real terminal for the live view).
ensure_test_tools() {
    local missing=()
    command -v python3 >/dev/null || missing+=(python3)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v tmux >/dev/null || missing+=(tmux)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]}"
        apt-get update -qq && apt-get install -y -qq "${missing[@]}"
    fi
}

# The example and fixture components, into target/wasm32-wasip2/release.
build_examples() {
    echo "==> building the example components (wasm32-wasip2)"
    cargo build --manifest-path examples/Cargo.toml --target wasm32-wasip2 --release --target-dir target
}

# pytest in a venv (target/venv-pytest), for the Python SDK's native tests.
ensure_pytest() {
    if [ ! -x target/venv-pytest/bin/pytest ]; then
        echo "==> installing pytest into target/venv-pytest"
        python3 -m venv target/venv-pytest
        target/venv-pytest/bin/pip install --quiet --disable-pip-version-check pytest==8.3.4
    fi
}

# The Python SDK's tests and each Python example's, natively (no WebAssembly).
python_tests() {
    ensure_pytest
    local dir
    for dir in sdk/python examples/consumers-py/*/; do
        (cd "$dir" && PYTHONPATH="$OLDPWD/sdk/python" "$OLDPWD/target/venv-pytest/bin/pytest" -q -p no:cacheprovider)
    done
}

# The JavaScript SDK's tests and the examples', natively under node's test
# runner (no WebAssembly). `npm install` in examples/consumers-js links the
# SDK there as `weir`; it fetches nothing.
js_tests() {
    command -v node >/dev/null || { echo "node (20 or later) is needed for the JavaScript SDK" >&2; return 1; }
    (cd sdk/js && node --test)
    (cd examples/consumers-js && npm install --no-audit --no-fund --loglevel=error && node --test)
    # TypeScript: tsc type-checks the stages against the SDK's .d.ts files and
    # compiles them and their tests to build/, which node then runs.
    (cd examples/consumers-ts && npm install --no-audit --no-fund --loglevel=error && npm test --silent)
}

# Headless Chromium (Debian's package) and playwright-core (npm, in
# tests/browser) for the console's browser test (tests/e2e/console.rs).
ensure_browser() {
    if [ ! -x /usr/bin/chromium ]; then
        echo "==> installing Chromium (Debian's package) for the console's browser test"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    fi
    if [ ! -d tests/browser/node_modules/playwright-core ]; then
        echo "==> installing playwright-core into tests/browser"
        (cd tests/browser && npm install --no-audit --no-fund --loglevel=error)
    fi
}

# The Python, JavaScript and TypeScript example stages, built by `weir build`
# (which installs componentize-py or componentize-js into weir's cache folder
# on first use) as NAME-py.wasm, NAME-js.wasm and NAME-ts.wasm beside the Rust ones; skipped
# when newer than their sources, the SDK and the WIT. Needs target/debug/weir.
build_other_examples() {
    local lang dir name out
    for lang in py js ts; do
        for dir in examples/consumers-$lang/*/; do
            [ -f "$dir/stage.$lang" ] || continue   # node_modules, say
            name=$(basename "$dir")
            out=target/wasm32-wasip2/release/$name-$lang.wasm
            if [ -f "$out" ] && [ -z "$(find "$dir" sdk/python sdk/js wit -path '*/node_modules' -prune -o -newer "$out" -type f -print | head -1)" ]; then
                continue
            fi
            echo "==> building the example $name-$lang (weir build)"
            target/debug/weir build "$dir" --out "$out"
        done
    done
}

# cargo-fuzz (libFuzzer) for scripts/fuzz. It needs nightly-only compiler
# flags; this machine has one stable toolchain, so scripts/fuzz sets
# RUSTC_BOOTSTRAP=1 for its builds (and only for them).
ensure_cargo_fuzz() {
    if ! command -v cargo-fuzz >/dev/null; then
        echo "==> installing cargo-fuzz"
        cargo install cargo-fuzz --version 0.13.2 --locked
    fi
}
