# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PIP := $(VENV)/bin/python -m pip --disable-pip-version-check
WORKDIR ?= runs/demo
# Extra flags for the demo, e.g. DEMO_ARGS="--config.num_train_steps=200" for a quick look.
DEMO_ARGS ?=
# Real benchmark data for the tests that need it (CI sets it to ../shared/data).
EDSR_SHARED_DATA ?= $(abspath ../shared/data)
export EDSR_SHARED_DATA
PYTEST_ARGS ?=
# `make upscale IMAGES=photo.png`: the shipped EDSR (pretrained/) on your images.
# IMAGES is one image file or folder, or several separated by spaces. When IMAGES as a
# whole names an existing file or folder, it is that one path, spaces and all
# (IMAGES="my photos/a b.png"); otherwise it is split at spaces. Several paths that
# contain spaces: put the images in one folder and name the folder. Relative paths
# (IMAGES, OUT) are read from this folder, the repository root, where make runs (also
# with `make -C`); errors name the absolute path looked at. SCALE: 2, 3 or 4 (x2, X3 are
# read as 2, 3). OUT: the folder the results go to, <name>_x<SCALE>_SR.png.
IMAGES ?=
SCALE ?= 2
OUT ?= out
UPSCALE_SCALE = $(patsubst x%,%,$(patsubst X%,%,$(strip $(SCALE))))

.PHONY: demo upscale test test-slow lint format venv lock clean

# The venv holds exactly the lock: it is made anew whenever the lock changes, and every
# package is installed with --no-deps, so nothing unpinned can come in.
$(VENV)/.runtime: requirements.lock
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --no-deps -r requirements.lock
	touch $@

# The project itself, editable: `import edsr_jax` and the console scripts work from any folder.
$(VENV)/.project: $(VENV)/.runtime pyproject.toml
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The TPU and GPU compilers for `python -m edsr_jax.aot` (libtpu; JAX's CUDA plugin) go to
# folders of their own, not site-packages: JAX tries to start a TPU / CUDA runtime whenever
# they are importable, which on a machine without one prints warnings from every program.
# edsr_jax.aot loads them from there.
COMPILERS := '^(libtpu|jax-cuda12-plugin|jax-cuda12-pjrt)=='
$(VENV)/.test: $(VENV)/.project requirements-test.lock
	grep -Ev $(COMPILERS) requirements-test.lock > $(VENV)/requirements-test-site.txt
	$(PIP) install --quiet --no-deps -r $(VENV)/requirements-test-site.txt
	@# Every declared dependency is met, but those of requirements-nodeps.txt's packages.
	@$(PIP) check | grep -Ev "^($$(sed -n 's/==.*//p' requirements-nodeps.txt | paste -sd'|' -)) " \
	  && exit 1 || echo "pip check: OK (but for requirements-nodeps.txt, see there)"
	rm -rf $(VENV)/tpu-compiler $(VENV)/gpu-compiler
	$(PIP) install --quiet --no-deps --target $(VENV)/tpu-compiler $$(grep '^libtpu==' requirements-test.lock)
	$(PIP) install --quiet --no-deps --target $(VENV)/gpu-compiler $$(grep '^jax-cuda12-' requirements-test.lock)
	touch $@

venv: $(VENV)/.test

demo: $(VENV)/.project
	$(VENV)/bin/python -m edsr_jax.demo --config=configs/demo.py --workdir=$(WORKDIR) $(DEMO_ARGS)

# IMAGES and OUT reach the recipe's shell as environment variables, never as text pasted
# into it, so quotes and other characters in paths are taken literally.
upscale: export IMAGES := $(IMAGES)
upscale: export OUT := $(OUT)
upscale: $(VENV)/.project
	$(if $(strip $(IMAGES)),,$(error name your images: make upscale IMAGES="photo.png [more.jpg folder/]" [SCALE=3|4] [OUT=out]))
	$(if $(filter-out 2 3 4,$(UPSCALE_SCALE))$(filter-out 1,$(words $(UPSCALE_SCALE))),$(error SCALE=$(SCALE): the shipped models are x2, x3 and x4: give the number, 2, 3 or 4))
	@set -f; \
	abs() { case $$1 in /*) printf '%s' "$$1";; \~/*) printf '%s/%s' "$$HOME" "$${1#??}";; *) printf '%s/%s' "$$(pwd)" "$$1";; esac; }; \
	if [ -e "$$(abs "$$IMAGES")" ]; then set -- "$$IMAGES"; else set -- $$IMAGES; fi; \
	found=; missing=; \
	for image do \
	  shift; image=$$(abs "$$image"); set -- "$$@" "$$image"; \
	  if [ -e "$$image" ]; then found=1; else missing="$$missing$${missing:+, }$$image"; fi; \
	done; \
	if [ -z "$$found" ]; then \
	  if [ $$# -gt 1 ]; then missing="$$(abs "$$IMAGES") as one path, nor $$missing as $$# paths"; fi; \
	  echo "error: IMAGES=\"$$IMAGES\": no such file or folder: $$missing (relative paths are read from $$(pwd), where make runs)" >&2; \
	  exit 1; \
	fi; \
	exec $(VENV)/bin/python -m edsr_jax.upscale --checkpoint=pretrained/edsr_291_x$(UPSCALE_SCALE) \
	  --output_dir="$$(abs "$$OUT")" "$$@"

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.test
	$(VENV)/bin/ruff format .

test: lint
	$(VENV)/bin/python -m pytest -m "not slow" -n auto --dist=loadfile --durations=15 $(PYTEST_ARGS)

test-slow: $(VENV)/.test
	$(VENV)/bin/python -m pytest -m slow $(PYTEST_ARGS)

# Regenerates both locks from the human-edited requirements*.txt in a throw-away venv
# (requirements-nodeps.txt: packages whose declared dependencies are not installed, see there).
# The test lock is resolved under the runtime lock, so the two never disagree.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	.lock-venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
	  -r requirements-nodeps.txt
	.lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip==' \
	  | sed '1i # Generated by `make lock` from requirements.txt; do not edit.' > requirements.lock
	.lock-venv/bin/python -m pip install --quiet --disable-pip-version-check \
	  -r requirements-test.txt -c requirements.lock
	.lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip==' \
	  | sed '1i # Generated by `make lock` from requirements-test.txt; do not edit.' \
	  > requirements-test.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
