# Eventline — the two commands that matter: `make test` and `make run`.
SWIFT ?= swift
# What the build and `make run` need from Debian (the Swift toolchain aside).
PACKAGES := pkg-config libpq-dev liblz4-dev libssl-dev postgresql redis-server curl ca-certificates
# What the tests need on top: the lz4 tool (archive interop) and Debian's own Python packages
# for the OpenAPI conformance check (never pip: Debian's python3 is externally managed).
TEST_PACKAGES := lz4 python3 python3-yaml python3-jsonschema patroni etcd-server
BENCH_SECONDS ?= 20

.PHONY: deps test-deps build test run bench clean

## deps: install the Debian packages that are missing (as root), or name them.
deps:
	@./scripts/apt-install $(PACKAGES)

test-deps:
	@./scripts/apt-install $(PACKAGES) $(TEST_PACKAGES)

build: deps
	$(SWIFT) build

# The example service, built as its own package against this checkout, as a team's service
# would be. It has a build directory of its own: sharing the root's saves a cold build of the
# dependencies, but SwiftPM then misses changes of Eventline's modules in the example's own
# targets, and an incremental build links stale objects.
EXAMPLE := --package-path Examples/warehouse

## test: every test, against a private PostgreSQL (and Redis) started by the test support;
## then the example service's build and tests.
# The suites that crash and fail over databases under load run on their own afterwards: beside
# the rest they load two cores enough to make other tests' clients wait.
HEAVY_SUITES := FailoverTests|CrashFaultTests|PartitionKillTests

test: test-deps
	$(SWIFT) build --build-tests
	SWIFT=$(SWIFT) ./scripts/swift-test --skip-build --skip '$(HEAVY_SUITES)'
	SWIFT=$(SWIFT) ./scripts/swift-test --skip-build --filter '$(HEAVY_SUITES)'
	$(SWIFT) build --build-tests $(EXAMPLE)
	SWIFT=$(SWIFT) ./scripts/swift-test --skip-build $(EXAMPLE)

## run: a private PostgreSQL, migrated, serving the bank domain on 127.0.0.1:8080.
run: build
	$(SWIFT) run --skip-build eventctl dev

## bench: group commit against raw PostgreSQL (pgbench) on one private server.
bench: deps
	@./scripts/apt-install wrk
	$(SWIFT) build -c release --product eventline-bench
	$(SWIFT) build -c release --product eventctl
	$(SWIFT) run -c release --skip-build eventline-bench --seconds $(BENCH_SECONDS)

clean:
	rm -rf .build
