# Eventline — the two commands that matter: `make test` and `make run`.
SWIFT ?= swift
# What the build, the tests and `make run` need from Debian.
PACKAGES := pkg-config libpq-dev liblz4-dev lz4 postgresql redis-server curl
BENCH_SECONDS ?= 20

.PHONY: deps build test run bench clean

## deps: install the Debian packages that are missing (as root), or name them.
deps:
	@missing=""; \
	for package in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$package 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing"; \
	    echo "install them with: sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi
	@# The OpenAPI conformance test checks real responses with a Python validator.
	@python3 -c 'import yaml, openapi_schema_validator' 2>/dev/null || { \
	  echo "installing the Python packages pyyaml and openapi-schema-validator"; \
	  python3 -m pip install --quiet pyyaml openapi-schema-validator; \
	}

build: deps
	$(SWIFT) build

## test: every test, against a private PostgreSQL (and Redis) started by the test support.
test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

## run: a private PostgreSQL, migrated, serving the bank domain on 127.0.0.1:8080.
run: build
	$(SWIFT) run --skip-build eventctl dev

## bench: group commit against raw PostgreSQL (pgbench) on one private server.
bench: deps
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || { echo "install wrk (apt-get install -y wrk)"; exit 1; }
	$(SWIFT) build -c release --product eventline-bench
	$(SWIFT) build -c release --product eventctl
	$(SWIFT) run -c release --skip-build eventline-bench --seconds $(BENCH_SECONDS)

clean:
	rm -rf .build
