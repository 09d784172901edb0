#!/usr/bin/env bash
# Installs what building and testing graygate needs on a fresh Debian machine:
# cmake (Pingora's zlib-ng), uWSGI (uwsgi_pass tests), etcd and protoc (fleet), OpenSSL (TLS),
# supervisor and logrotate (for their integration tests),
# python3-prometheus-client (the metrics tests' parser), chromium, chromium-driver and
# fonts-liberation (the canary page test and its screenshot), nginx (the comparison tests); with
# --bench also wrk, valgrind and perf for the benchmarks, with --fuzz cargo-fuzz.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
# The supervisor integration test runs Debian's supervisord for real.
command -v supervisord >/dev/null 2>&1 || need+=(supervisor)
# The canary page test drives Debian's chromium headless (no browser download at test time).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# Its screenshot (docs/canary-page.png) needs text fonts; chromium only recommends them.
dpkg -s fonts-liberation >/dev/null 2>&1 || need+=(fonts-liberation)
# The logrotate integration test runs the shipped snippet with Debian's logrotate.
command -v logrotate >/dev/null 2>&1 || need+=(logrotate)
# The metrics tests parse /metrics with the Prometheus project's own (strict) OpenMetrics parser,
# with Debian's python (a python3 earlier in PATH, e.g. pyenv's, does not see Debian's modules).
/usr/bin/python3 -c 'import prometheus_client.openmetrics.parser' >/dev/null 2>&1 || need+=(python3-prometheus-client)
# The uwsgi_pass tests run Debian's uWSGI with its python3 plugin and a tiny WSGI app.
command -v uwsgi >/dev/null 2>&1 || need+=(uwsgi)
dpkg -s uwsgi-plugin-python3 >/dev/null 2>&1 || need+=(uwsgi-plugin-python3)
# The fleet tests start Debian's etcd on loopback; the etcd client crate builds with protoc.
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# Pingora's TLS (openssl feature) links the system OpenSSL, found through pkg-config; the TLS
# tests make their certificates with the openssl CLI.
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The tests compare graygate with Debian's nginx on the same requests (and the benches race it).
[[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
if [[ "${1:-}" == "--bench" ]]; then
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  # HTTP/2 load for bench/tls.sh.
  command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
  # bench/instructions.sh (callgrind) and bench/flame.sh (perf record).
  command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
  command -v perf >/dev/null 2>&1 || need+=(linux-perf)
fi
if ((${#need[@]})); then
  echo "deps: installing ${need[*]}" >&2
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # A package's post-install script can fail once on a fresh machine (seen with chromium);
  # a second run finishes its configuration.
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null ||
    { $sudo dpkg --configure -a && $sudo apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "deps: cargo not found; install Rust (https://rustup.rs) and run again" >&2
  exit 1
fi
# With --fuzz: cargo-fuzz for the targets in fuzz/ (they build with a nightly toolchain).
if [[ "${1:-}" == "--fuzz" ]]; then
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
  rustup toolchain list 2>/dev/null | grep -q nightly ||
    { echo "deps: fuzzing needs a nightly toolchain: rustup toolchain install nightly" >&2; exit 1; }
fi
