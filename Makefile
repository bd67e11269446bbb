# Two commands do all the set-up on a fresh machine that has python3:
#   make run   - the window, with the embedded coordinator and a local agent
#   make test  - the whole suite (Qt offscreen), ruff, import-linter and mypy
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AGENT_VENV ?= .venv-agent
CORE_VENV ?= .venv-core
DIST_VENV ?= .venv-dist
DIST_STAMP := $(DIST_VENV)/.installed
QT_LIB := $(VENV)/lib/python*/site-packages/PySide6/Qt

.PHONY: install run test lint unit agent-only core-only bench clean sysdeps sysdeps-run sysdeps-netns sysdeps-systemd images \
	dist dist-agent dist-gui dist-wheel

# Reinstalls only when pyproject.toml changed, so a second `make test` starts at once.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[gui,test]'
	@touch $(STAMP)

# Qt needs a few system libraries (EGL, xkbcommon, fontconfig; xcb for a real display). They are
# installed with apt only when missing, and only those the target needs: the tests run offscreen.
QT_TEST_LIBS = $(QT_LIB)/plugins/platforms/libqoffscreen.so $(QT_LIB)/lib/libQt6Gui.so.6 $(QT_LIB)/lib/libQt6Widgets.so.6
QT_RUN_LIBS = $(QT_TEST_LIBS) $(QT_LIB)/plugins/platforms/libqxcb.so
APT_QT = libegl1 libgl1 libopengl0 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 libdbus-1-3 libglib2.0-0 \
	libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 libxcb-xinerama0 libxcb-randr0 \
	libxcb-render-util0 libxcb-image0 fonts-dejavu-core

define ensure_libs
	@missing=$$(ldd $(1) 2>/dev/null | grep "not found" | sort -u); \
	if [ -n "$$missing" ]; then \
	    echo "Qt needs system libraries:"; echo "$$missing"; \
	    if [ "$$(id -u)" = 0 ]; then \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	            $(APT_QT) >/dev/null; \
	    else echo "run as root, or install with your package manager: $(APT_QT)"; exit 1; fi; \
	fi
endef

sysdeps: $(STAMP)
	$(call ensure_libs,$(QT_TEST_LIBS))

sysdeps-run: $(STAMP)
	$(call ensure_libs,$(QT_RUN_LIBS))

# The multi-host tests (tests/netns.py) build a LAN of network namespaces with `ip` (Debian package
# iproute2). They need root and are skipped without it, so iproute2 is installed (as root, with apt)
# only when `ip` is missing; without root the tests say why they are skipped.
sysdeps-netns:
	@if ! command -v ip >/dev/null 2>&1 && [ ! -x /usr/sbin/ip ] && [ ! -x /sbin/ip ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	        echo "the network-namespace tests need the ip tool: installing iproute2"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	            iproute2 >/dev/null; \
	    else echo "no ip tool (Debian package iproute2): the network-namespace tests will be skipped"; fi; \
	fi

# The systemd units that install-service writes are checked with `systemd-analyze verify` (Debian
# package systemd); installed like iproute2 above, only when missing, and those tests say why they
# are skipped without it.
sysdeps-systemd:
	@if ! command -v systemd-analyze >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	        echo "the systemd unit tests need systemd-analyze: installing systemd"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	            systemd >/dev/null; \
	    else echo "no systemd-analyze (Debian package systemd): the unit checks will be skipped"; fi; \
	fi

install: $(STAMP) sysdeps

run: install sysdeps-run
	$(VENV)/bin/dtf-gui

# ruff; import-linter (no circles, the rooms' layers, no I/O in the scheduler); mypy over the agent
# and the headless coordinator (strict on the protocol, scheduler, balancer and task table).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# A test machine installs only `dtf` (no extras): the agent must import and start without Qt,
# numpy, scipy or sqlite-utils being present at all.
agent-only:
	@test -x $(AGENT_VENV)/bin/python || $(PYTHON) -m venv $(AGENT_VENV)
	@$(AGENT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e . >/dev/null 2>&1 \
	    || $(AGENT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e .
	$(AGENT_VENV)/bin/python -m dtf_agent.selfcheck

# The coordinator headless (`dtf serve` on a server): dtf[server] only, no Qt at all.
core-only:
	@test -x $(CORE_VENV)/bin/python || $(PYTHON) -m venv $(CORE_VENV)
	@$(CORE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[server]' >/dev/null 2>&1 \
	    || $(CORE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[server]'
	$(CORE_VENV)/bin/python -m dtf_gui.coordinator.selfcheck

unit: install
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q tests/unit

test: install lint agent-only core-only sysdeps-netns sysdeps-systemd
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -ra --durations=15

bench: install
	$(PY) tests/bench/dispatch.py

# Bundles (installers/pyinstaller/README.md): dist/dtf-agent, one file that needs no Python on the test
# machine, and dist/dtf-gui/, the window in one folder. The agent is built from a venv of its own
# holding only the agent's dependencies (with the gpu extra: nothing can be added to a bundle later),
# so Qt, numpy and scipy cannot get into it. Each bundle is rebuilt only when its sources, its spec or
# its venv changed.
PYINSTALLER_FLAGS := --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller
AGENT_SOURCES := $(shell find dtf_agent -name '*.py' 2>/dev/null) installers/pyinstaller/dtf-agent.spec \
	installers/pyinstaller/dtf_agent_main.py installers/pyinstaller/frozen_python.py
GUI_SOURCES := $(AGENT_SOURCES) $(shell find dtf_gui -name '*.py' 2>/dev/null) resources/dtf.svg \
	installers/pyinstaller/dtf-gui.spec installers/pyinstaller/dtf_gui_main.py

# The Makefile too: the extras it installs are named below.
$(DIST_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(DIST_VENV)
	$(DIST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[gpu,otel,dist]'
	@touch $(DIST_STAMP)

# PYTHONHASHSEED fixed: the same sources give the same archive order (PyInstaller's advice for
# reproducible builds).
dist/dtf-agent: $(DIST_STAMP) $(AGENT_SOURCES)
	PYTHONHASHSEED=0 $(DIST_VENV)/bin/pyinstaller $(PYINSTALLER_FLAGS) installers/pyinstaller/dtf-agent.spec
	@touch $@

dist/dtf-gui/dtf-gui: $(STAMP) $(GUI_SOURCES)
	@$(PY) -c 'import PyInstaller' 2>/dev/null || \
	    $(PY) -m pip install --quiet --disable-pip-version-check -e '.[gui,dist]'
	PYTHONHASHSEED=0 $(VENV)/bin/pyinstaller $(PYINSTALLER_FLAGS) installers/pyinstaller/dtf-gui.spec
	@touch $@

dist-agent: dist/dtf-agent
	@ls -l dist/dtf-agent

dist-gui: dist/dtf-gui/dtf-gui
	@du -sh dist/dtf-gui

# The package itself, for test machines that have Python: `pip install dist/dtf-VERSION-py3-none-any.whl`.
dist-wheel: $(STAMP)
	$(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps -w dist .
	@ls -l dist/*.whl

dist: dist-agent dist-gui dist-wheel

# Container images (installers/docker/README.md): needs a Docker engine.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
images:
	docker build -f installers/docker/agent.Dockerfile -t dtf-agent:$(VERSION) .
	docker build -f installers/docker/coordinator.Dockerfile -t dtf-coordinator:$(VERSION) .

clean:
	rm -rf $(VENV) $(AGENT_VENV) $(CORE_VENV) $(DIST_VENV) .pytest_cache .ruff_cache \
	    build/pyinstaller dist/dtf-agent dist/dtf-gui dist/dtf-*.whl
