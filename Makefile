# kheops-ohif: `make run` (the demo) and `make test` (the whole suite) on a fresh machine.
# Both are idempotent: a second run only does what changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

# The demo keeps a generated SECRET_KEY in git-ignored var/ (SECRET_KEY in the environment wins).
export SECRET_KEY_FILE ?= $(CURDIR)/var/secret_key
ifdef DATABASE_URL
export DATABASE_URL
endif

.PHONY: run test test-deploy prepare deps deps-dev system-deps system-deps-test lint lint-js node bench loadtest clean messages

# The demo: Orthanc + the KHEOPS stand-in + the viewer; prints the URL to open.
run: prepare
	$(PY) scripts/demo.py

test: deps-dev system-deps-test prepare
	$(PY) -m pytest

lint: deps-dev lint-js
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# ESLint for our browser scripts (static/launcher/*.js; eslint.config.js says what and how).
lint-js: node_modules/.installed
	node_modules/.bin/eslint

# The tools of package-lock.json, installed again only when it (or package.json) changed.
node_modules/.installed: package.json package-lock.json | node
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Node.js and npm (for ESLint): Debian's packages, only when the machine has neither.
node:
	@command -v node >/dev/null && command -v npm >/dev/null \
		|| scripts/ensure-debian-packages.sh nodejs npm

deps: $(VENV)/.deps-run $(VENV)/.checkout-on-path
deps-dev: $(VENV)/.deps-dev $(VENV)/.checkout-on-path

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps-run: requirements.txt sandbox/requirements.txt | $(VENV)/bin/python
	$(PIP) -r requirements.txt -r sandbox/requirements.txt
	touch $@

$(VENV)/.deps-dev: requirements.txt requirements-dev.txt sandbox/requirements.txt | $(VENV)/bin/python
	$(PIP) -r requirements-dev.txt -r sandbox/requirements.txt
	touch $@ $(VENV)/.deps-run

# This checkout on the venv's import path (a .pth file, as an editable install writes): tests,
# bench/ and scripts/ import devstack, sandbox and tests from any directory, no sys.path edits.
$(VENV)/.checkout-on-path: | $(VENV)/bin/python
	$(PY) -c 'import pathlib, sys, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "kheops-ohif-checkout.pth").write_text(sys.argv[1] + "\n")' "$(CURDIR)"
	touch $@

var/secret_key:
	@mkdir -p var
	@umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))' > $@

# Debian packages the server needs (installed only when missing): GNU gettext compiles the
# translations (`make prepare`) and collects the strings to translate (`make messages`).
DEBIAN_PACKAGES := gettext
system-deps:
	@scripts/ensure-debian-packages.sh $(DEBIAN_PACKAGES)

# Debian packages the test suite needs (installed only when missing).
system-deps-test:
	@scripts/ensure-debian-packages.sh $(TEST_DEBIAN_PACKAGES)

# Orthanc backs the KHEOPS stand-in's DICOMweb; Chromium runs the browser tests (tests/e2e);
# nginx runs the deployment's configuration in front of our app (the relay offload's tests),
# with the Lua module its memory of the app's hand-overs needs.
TEST_DEBIAN_PACKAGES := orthanc orthanc-dicomweb chromium nginx-light libnginx-mod-http-lua

prepare: deps system-deps var/secret_key
	$(PY) manage.py compilemessages --ignore .venv --ignore node_modules --ignore var --verbosity 0
	$(PY) manage.py install_ohif
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py migrate --noinput --verbosity 0

# The deployment kit end to end (deploy/test/run.py): the image and deploy/compose.yaml built
# and run with rootful podman, launches through nginx over HTTPS against the KHEOPS stand-in,
# a burst of 100 with one replica stopped; torn down afterwards. Root, about 5 minutes.
test-deploy: deps-dev
	@scripts/ensure-debian-packages.sh $(DEPLOY_DEBIAN_PACKAGES)
	$(PY) deploy/test/run.py

# podman and its network stack, podman-compose, debootstrap (the base image); Orthanc for the
# stand-in's studies.
DEPLOY_DEBIAN_PACKAGES := podman runc netavark aardvark-dns iptables catatonit podman-compose \
	debootstrap orthanc orthanc-dicomweb

# Benchmarks (bench/*.py): a markdown table on stdout, JSON in git-ignored bench/results.json.
# Each builds a throwaway database (temporary SQLite, or beside DATABASE_URL's). Orthanc and
# Chromium and nginx too: the same Debian packages as the tests (nginx: the deployment's in
# front of our app, and the relay bench's reference, a reverse proxy in C relaying the same loads).
bench: deps-dev system-deps-test prepare
	$(PY) bench/run.py

# Load test (bench/loadtest.py): bursts of 1 to 500 simultaneous launches, and a slow KHEOPS,
# against our production server and the WSGI baseline on PostgreSQL
# (its own database on postgres://postgres@127.0.0.1:5432/, dropped afterwards); loopback only.
loadtest: deps-dev prepare
	$(PY) bench/loadtest.py

clean:
	rm -rf $(VENV) node_modules var/ohif var/staticfiles

# The translators' catalogues (locale/<language>/LC_MESSAGES/django.po) brought up to date with
# the strings marked in our code and templates; then translate what is new or fuzzy.
messages: deps
	$(PY) manage.py makemessages $(MESSAGES_OPTIONS) $(foreach language,$(TRANSLATIONS),-l $(language))

# The languages we translate into (English is the source), and what makemessages reads:
# our code and templates, not the stand-in, the tests or the tools. tests/test_translations.py
# runs the same command.
TRANSLATIONS := fr de
MESSAGES_OPTIONS := --no-obsolete --add-location file --ignore .venv --ignore node_modules \
	--ignore var --ignore sandbox --ignore tests --ignore bench --ignore devstack --ignore scripts \
	--ignore artifacts --ignore static
