# moorage: `make run` starts the whole suite, `make test` runs every test.
# Both install what is missing first (Debian packages, the virtualenv).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := .build
APT_PACKAGES := python3-venv python3-dev gcc make git runc crun containerd golang-go \
	golang-github-containerd-ttrpc-dev golang-github-docker-spdystream-dev \
	golang-github-gorilla-websocket-dev \
	containernetworking-plugins docker-registry skopeo \
	umoci busybox-static iproute2 iptables apache2-utils openssl zstd procps util-linux systemd strace
GOPEER := $(STAMP)/ttrpc-gopeer
SPDYCLIENT := $(STAMP)/spdy-client

.PHONY: run cni-default test bench protos check-protos deps venv relay gopeer spdyclient typecheck clean

run: deps venv relay cni-default
	$(VENV)/bin/moorage up

# A host without any CNI network gets deploy/'s bridge network (as nerdctl does on first use);
# an existing configuration is never touched.
cni-default:
	@if ! ls /etc/cni/net.d/*.conflist /etc/cni/net.d/*.conf >/dev/null 2>&1; then \
	  install -D -m 0644 deploy/10-moorage.conflist /etc/cni/net.d/10-moorage.conflist; \
	  echo "installed /etc/cni/net.d/10-moorage.conflist"; fi

test: deps venv relay gopeer spdyclient
	$(MAKE) check-protos
	$(MAKE) typecheck
	$(VENV)/bin/pytest -q

bench: deps venv relay gopeer spdyclient
	@for b in $(filter-out bench/anchor.py,$(wildcard bench/*.py)); do echo "== $$b"; $(PY) $$b || exit 1; done

deps: $(STAMP)/deps
$(STAMP)/deps:
	@mkdir -p $(STAMP)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; rc=$$?; \
	  rm -f /usr/sbin/policy-rc.d; [ $$rc -eq 0 ] || exit $$rc; \
	fi
	@# moorage never runs the containerd daemon: only its runc shim is used.
	@if [ -d /run/systemd/system ]; then systemctl disable --now containerd.service >/dev/null 2>&1 || true; fi
	@touch $@

venv: $(STAMP)/venv
$(STAMP)/venv: pyproject.toml setup.py | deps
	@mkdir -p $(STAMP)
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) .ci/editable.py
	@touch $@

relay: $(STAMP)/relay
# The proxy's C data plane (proxy/relay.c) as a cffi extension next to its sources.
$(STAMP)/relay: proxy/relay.c proxy/relay.h proxy/relay_build.py $(STAMP)/venv
	$(PY) proxy/relay_build.py
	@touch $@

gopeer: $(GOPEER)
# Offline, GOPATH mode, against Debian's golang-github-containerd-ttrpc-dev (ttrpc 1.1.1).
$(GOPEER): $(wildcard tests/interop/gopeer/*.go) | deps
	@mkdir -p $(STAMP)/gocache
	cd tests/interop/gopeer && GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= GOPROXY=off \
	  GOCACHE=$(CURDIR)/$(STAMP)/gocache go build -o $(CURDIR)/$(GOPEER) .

spdyclient: $(SPDYCLIENT)
# The CRI streaming tests' client, against Debian's spdystream and gorilla/websocket.
$(SPDYCLIENT): $(wildcard tests/cri/spdyclient/*.go) | deps
	@mkdir -p $(STAMP)/gocache
	cd tests/cri/spdyclient && GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= GOPROXY=off \
	  GOCACHE=$(CURDIR)/$(STAMP)/gocache go build -o $(CURDIR)/$(SPDYCLIENT) .

protos: venv
	$(PY) -m moorage.api.build

check-protos: venv
	$(PY) -m moorage.api.build --check

typecheck: venv
	$(PY) .ci/typecheck.py

clean:
	rm -rf $(STAMP) proxy/_relay.*.so
