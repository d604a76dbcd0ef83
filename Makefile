# zkbridge: `make run` for the quick start, `make test` for the test suite.
.PHONY: run test lint build clean bench bench-quick

run:
	scripts/run-local.sh

# Integration tests start real ZooKeeper servers (JVMs); two at a time suits
# a 2-core machine.
test:
	scripts/install-deps.sh
	cargo test --all-targets -- --test-threads=2

# Side-by-side figures (see docs/performance.md): `make bench ARGS="--nodes 20000"`.
bench:
	scripts/install-deps.sh
	cargo bench --bench bench -- $(ARGS)

# Small and short: keeps the benchmark working (CI), says nothing about speed.
bench-quick:
	scripts/install-deps.sh
	cargo bench --bench bench -- --quick

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

build:
	cargo build --release

clean:
	cargo clean
	rm -rf .run
