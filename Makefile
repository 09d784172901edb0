# The two commands a fresh machine needs: `make run` and `make test`.
.PHONY: run test bench bench-lifecycle soak deps fuzz canary-page

deps:
	@scripts/deps.sh

# Build and start graygate on its embedded default config (conf/graygate.yaml): the seed's
# balancer on :10001 in front of two built-in demo backends on :11001 (old) and :12001 (new).
run: deps
	cargo run --release --

# Everything CI checks: formatting, lints, unit and integration tests.
test: deps
	cargo fmt --all -- --check
	cargo clippy --release --all-targets -- -D warnings
	@bash -o pipefail -c 'cargo test --release --lib --bins --tests 2>&1 | tee target/test.log'
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test.log

# Side-by-side benchmarks against nginx (installs nginx, wrk, valgrind and perf): the balancer
# (bench/RESULTS.md), the seed's app server with static files and uWSGI (bench/SEED.md), TLS and h2
# (bench/tls.sh), then the
# load-independent instructions and allocations per request (bench/INSTRUCTIONS.md).
bench:
	@scripts/deps.sh --bench
	bench/run.sh
	bench/seed.sh
	bench/tls.sh
	bench/instructions.sh

# Failed requests during 20 upgrades + 20 reloads (graygate) vs 20 reloads (nginx).
bench-lifecycle:
	@scripts/deps.sh --bench
	bench/lifecycle.sh

# Hostile and failing neighbours for SOAK_SECONDS (default 600) while graygate is reloaded,
# upgraded and its logs rotated; see bench/SOAK.md.
soak:
	@scripts/deps.sh --bench
	bench/soak.sh

# Each cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 60) seconds.
fuzz:
	@scripts/deps.sh --fuzz
	fuzz/run.sh $${FUZZ_SECONDS:-60}

# Refreshes docs/canary-page.png (the README's picture of the canary page) from the browser
# test's screenshot, which `make test` leaves in target/test-artefacts/.
canary-page: deps
	cargo test --release --test it -- canary_page
	cp target/test-artefacts/canary-page.png docs/canary-page.png
