# postern's build, run and test entry points. `make test` installs what the
# tests need (Debian packages for the real test peers) on a machine that has
# only Go, then runs every test.

GO      ?= go
BIN     := bin/postern
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

# Real peers the integration tests drive: swaks (client), Postfix's
# smtp-sink (receiver), dkimpy + PyNaCl (independent DKIM verifier), curl
# (HTTP client of the admin API, and the dns-01 hook of the ACME tests), and
# for outbound TLS policy: openssl (the test CA), nsd (authoritative DNS for
# signed zones), ldnsutils (ldns-keygen, ldns-signzone) and unbound (the
# validating resolver DANE trusts), and redis-server (the shared store of
# limits.redis). A policy-rc.d keeps the packages from
# starting system services (nsd and unbound would take port 53): the tests
# start their own, on loopback.
DEB_PACKAGES := postfix swaks libnet-ssleay-perl libio-socket-ssl-perl python3-dkim python3-nacl haproxy curl \
	openssl nsd unbound ldnsutils postgresql redis-server

# Let's Encrypt's ACME test server, for the tls.acme tests: a Go program,
# installed from the module proxy into bin/tools (relaytest.PebblePath
# finds it there).
PEBBLE_VERSION := v2.10.3

# Fuzz targets run briefly by `make test` and at length by `make fuzz`.
FUZZTIME      ?= 3s
FUZZTIME_LONG ?= 2m

# nfpm builds the .deb of `make package` (a Go program, like pebble).
NFPM_VERSION := v2.48.0
# A Debian version: a tag v1.2 gives 1.2; before the first tag,
# 0~git.<commit> (sorting below any release).
DEB_VERSION = $(shell echo "$(VERSION)" | sed -e 's/^v\([0-9]\)/\1/' -e 't d' -e 's/^/0~git./' -e ':d' -e 's/-/./g')

.PHONY: all build run test unit deps lint fuzz bench clean package

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/postern

# Runs postern on its built-in default config: every listener on loopback,
# data in ./data. Add a user first: see README.md.
run: build
	./$(BIN) serve --config builtin

test: deps lint
	$(GO) test -race -count=1 -timeout 25m ./...
	$(MAKE) --no-print-directory fuzz FUZZTIME_LONG=$(FUZZTIME)

# Unit and integration tests without installing anything.
unit:
	$(GO) test -count=1 ./...

# Installs the test peers when missing. Needs root (or sudo) and apt.
deps:
	@missing=""; \
	command -v swaks >/dev/null || missing="$$missing swaks"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	perl -MNet::SSLeay -MIO::Socket::SSL -e1 2>/dev/null || missing="$$missing libnet-ssleay-perl"; \
	command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	command -v smtp-sink >/dev/null || [ -x /usr/sbin/smtp-sink ] || missing="$$missing postfix"; \
	/usr/bin/python3 -c 'import dkim, nacl' 2>/dev/null || missing="$$missing python3-dkim python3-nacl"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	[ -x /usr/sbin/nsd ] || missing="$$missing nsd"; \
	[ -x /usr/sbin/unbound ] || missing="$$missing unbound"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v ldns-signzone >/dev/null && command -v ldns-keygen >/dev/null || missing="$$missing ldnsutils"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		echo "installing test peers:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		echo "postfix postfix/main_mailer_type select No configuration" | $$SUDO debconf-set-selections && \
		printf '#!/bin/sh\nexit 101\n' | $$SUDO tee /usr/sbin/policy-rc.d >/dev/null && $$SUDO chmod 755 /usr/sbin/policy-rc.d && \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES) >/dev/null; \
		status=$$?; $$SUDO rm -f /usr/sbin/policy-rc.d; \
		[ $$status = 0 ] || { echo "could not install the test peers ($(DEB_PACKAGES)); the integration tests need them" >&2; exit 1; }; \
	fi
	$(GO) mod download
	@[ -x bin/tools/pebble ] || { \
		echo "installing pebble $(PEBBLE_VERSION) into bin/tools"; \
		mkdir -p bin/tools && GOBIN=$(abspath bin/tools) $(GO) install github.com/letsencrypt/pebble/v2/cmd/pebble@$(PEBBLE_VERSION); }
	@[ -x bin/tools/nfpm ] || { \
		echo "installing nfpm $(NFPM_VERSION) into bin/tools"; \
		mkdir -p bin/tools && GOBIN=$(abspath bin/tools) $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION); }

# The .deb (configs/packaging/nfpm.yaml): a static binary, the systemd unit, the
# example config and README; its scripts make the postern user, the data
# directory and maildrop, and the sendmail alternative. Written to bin/.
package:
	@[ -x bin/tools/nfpm ] || $(MAKE) --no-print-directory deps
	mkdir -p bin/package
	rm -f bin/postern_*.deb
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/package/postern ./cmd/postern
	VERSION='$(DEB_VERSION)' ARCH=$$(dpkg --print-architecture) bin/tools/nfpm package --config configs/packaging/nfpm.yaml --packager deb --target bin/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Every Fuzz target in every package, one after the other. A failure that
# wrote a failing input under testdata/fuzz fails at once. go test -fuzz
# also fails now and then with no input written, when -fuzztime ends while
# a worker is busy ("context deadline exceeded", "fuzzing process hung or
# terminated unexpectedly": golang/go#56238, #52569): such a run is tried
# once more, and fails the target only if it fails again.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
		for t in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/^func //'); do \
			echo "fuzz $$t in $$pkg for $(FUZZTIME_LONG)"; \
			corpus="$$dir/testdata/fuzz/$$t"; \
			for try in 1 2; do \
				before=$$(ls "$$corpus" 2>/dev/null | wc -l); \
				if $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME_LONG) $$pkg; then break; fi; \
				if [ "$$(ls "$$corpus" 2>/dev/null | wc -l)" != "$$before" ] || [ $$try = 2 ]; then exit 1; fi; \
				echo "fuzz $$t: failed with no failing input written; trying once more"; \
			done; \
		done; \
	done

# Benchmarks: first the in-package Go benchmarks (queue, DKIM, SMTP session,
# webhook delivery), then the side-by-side run of the built binary against
# Postfix on this machine (cmd/postern/bench_test.go, build tag `bench`; it
# explains how Postfix and OpenDKIM are isolated). The table goes to stdout and to
# bin/bench-results.md. Knobs: BENCH_REPS=N repetitions per cell (default 3,
# medians reported), BENCH_QUICK=1 (one repetition, small counts: a smoke
# test, not a measurement), BENCH_DIR (scratch parent, default /var/spool;
# on the disk being measured, not tmpfs, and not world-writable, or OpenDKIM
# refuses its config), BENCH_CELLS=a,b (only cells whose name contains a or
# b, e.g. "4 KiB, 1 session"), BENCH_ONLY=postern (skip Postfix),
# BENCH_PROFILE=DIR (a CPU profile of each postern run, through
# POSTERN_CPUPROFILE). Needs root, for Postfix.
bench: build bench-deps
	$(GO) test -run '^$$' -bench . -benchmem ./queue/ ./queue/postgres/ ./dkim/ ./relay/...
	BENCH_BIN=$(abspath $(BIN)) BENCH_OUT=$(abspath bin/bench-results.md) \
	BENCH_COMMAND="make bench" \
		BENCH_TOXIPROXY=$(abspath bin/tools/toxiproxy-server) \
		$(GO) test -tags bench -run '^(TestBenchVsPostfix|TestBenchSubmission|TestBenchAPI|TestBenchLatency)$$' -count=1 -timeout 4h -v ./cmd/postern/

# Installs what `make bench` drives when missing: Postfix (the contender and
# smtp-source/smtp-sink), OpenDKIM (Postfix's usual signer), openssl (its
# Ed25519 key, the TLS certificate), Dovecot (Postfix's usual SASL server)
# and Python 3 (smtplib, a client applications use). Postfix is preseeded to
# "No configuration" and Dovecot is installed with a policy-rc.d that
# forbids starting services, so neither system instance runs: the benchmark
# starts its own, in its scratch directory.
BENCH_DEB_PACKAGES := postfix opendkim opendkim-tools openssl dovecot-core python3 postgresql linux-perf

# toxiproxy (Shopify's latency proxy: tc netem is not available on these
# machines) is a Go program: installed from the module proxy into bin/tools.
TOXIPROXY_VERSION := v2.12.0

bench-deps:
	@[ -x bin/tools/toxiproxy-server ] || { \
		echo "installing toxiproxy $(TOXIPROXY_VERSION) into bin/tools"; \
		mkdir -p bin/tools && GOBIN=$(abspath bin/tools) $(GO) install github.com/Shopify/toxiproxy/v2/cmd/server@$(TOXIPROXY_VERSION) && \
		mv bin/tools/server bin/tools/toxiproxy-server; }
	@missing=""; \
	[ -x /usr/sbin/smtp-source ] && [ -x /usr/sbin/smtp-sink ] && [ -x /usr/lib/postfix/sbin/master ] || missing="$$missing postfix"; \
	[ -x /usr/sbin/opendkim ] || missing="$$missing opendkim"; \
	command -v opendkim-genkey >/dev/null || missing="$$missing opendkim-tools"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	[ -x /usr/sbin/dovecot ] && [ -x /usr/bin/doveadm ] || missing="$$missing dovecot-core"; \
	[ -x /usr/bin/python3 ] || missing="$$missing python3"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	perf version >/dev/null 2>&1 || missing="$$missing linux-perf"; \
	if [ -n "$$missing" ]; then \
		echo "installing benchmark peers:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		echo "postfix postfix/main_mailer_type select No configuration" | $$SUDO debconf-set-selections && \
		printf '#!/bin/sh\nexit 101\n' | $$SUDO tee /usr/sbin/policy-rc.d >/dev/null && $$SUDO chmod 755 /usr/sbin/policy-rc.d && \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BENCH_DEB_PACKAGES) >/dev/null; \
		status=$$?; $$SUDO rm -f /usr/sbin/policy-rc.d; \
		[ $$status = 0 ] || { echo "could not install the benchmark peers ($(BENCH_DEB_PACKAGES))" >&2; exit 1; }; \
	fi

clean:
	rm -rf bin
