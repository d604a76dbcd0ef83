# zkbridge: `make run` for the quick start, `make test` for the test suite.
.PHONY: run test test-zk39 test-regions soak lint build clean bench bench-quick

run:
	scripts/run-local.sh

# Integration tests start real ZooKeeper servers (JVMs); two at a time suits
# a 2-core machine.
test:
	scripts/install-deps.sh
	cargo test --all-targets -- --test-threads=2

# The integration suite against ZooKeeper 3.9 servers (3.8 is the default;
# mixed-version tests run in both).
test-zk39:
	scripts/install-deps.sh
	ZK_SERVER_VERSION=3.9 cargo test --tests -- --test-threads=2

# Regions as network namespaces (tests/common/rig.rs): the fault scenarios
# and a short nemesis soak. Needs root; the tests say so and skip otherwise.
test-regions:
	scripts/install-deps.sh
	cargo test --test regions --test soak -- --test-threads=1

# The nemesis soak alone, for SECONDS (default 180); figures in
# target/soak/results.json. SEED=N replays a schedule.
SECONDS ?= 180
soak:
	scripts/install-deps.sh
	SOAK_SECONDS=$(SECONDS) TEST_SEED=$(SEED) cargo test --test soak -- --nocapture

# Side-by-side figures (see docs/performance.md): `make bench ARGS="--nodes 20000"`.
bench:
	scripts/install-deps.sh --bench
	cargo bench --bench bench -- $(ARGS)

# Small and short: keeps the benchmark working (CI), says nothing about speed.
bench-quick:
	scripts/install-deps.sh --bench
	cargo bench --bench bench -- --quick

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

build:
	cargo build --release

clean:
	cargo clean
	rm -rf .run
