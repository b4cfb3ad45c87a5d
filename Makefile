# Two entry points that work on a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
# Every install uses the committed lock (constraints.txt) so a fresh clone gets versions
# known to pass; `make lock` refreshes it (see the README).
VENV   ?= .venv
PY     := $(VENV)/bin/python
LOCK   := constraints.txt
PIP    := $(PY) -m pip -q --disable-pip-version-check
PIPC   := $(PIP) install -c $(LOCK)
TORCH  ?= torch==2.13.0

.PHONY: demo test install install-test lock clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIPC) --upgrade pip
	$(PIPC) $(TORCH)
	$(PIPC) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIPC) -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(VENV)/bin/qfid demo

test: $(VENV)/.installed-test
	$(PY) -m pytest -q $(PYTEST_ARGS)

# A new lock from a fresh venv: torch (CPU build) first, then qfid with its test extras,
# all resolved from pyproject.toml's ranges. Run `make test` afterwards, then commit.
lock:
	rm -rf .lock-venv
	python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip -q --disable-pip-version-check install $(TORCH)
	.lock-venv/bin/python -m pip -q --disable-pip-version-check install -e '.[test]'
	.lock-venv/bin/python -m pip freeze --exclude-editable | python3 .ci/lock.py write > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
