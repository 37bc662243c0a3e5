# GadSynth: `make run` and `make test` each set up everything on a fresh machine, then run.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE := sample
# Holoscan (MONAI Deploy's runtime) asks for a larger stack; harmless elsewhere.
ULIMIT := ulimit -s 32768 2>/dev/null || true;

.PHONY: setup system venv run test lint typecheck pytest bench hostile image package-venv map-app map-manifests clean

setup: system venv

system:
	@bash scripts/setup-system.sh

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: GadSynth needs Python 3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,train]'
	@touch $@

run: setup
	@if [ ! -d $(SAMPLE)/study/dicom ]; then \
	  $(ULIMIT) $(BIN)/gadsynth phantom --seed 1 --out $(SAMPLE)/study; \
	fi
	@rm -rf $(SAMPLE)/output  # the pipeline never overwrites an earlier run's results: this target replaces them
	@$(ULIMIT) $(BIN)/gadsynth run $(SAMPLE)/study/dicom $(SAMPLE)/output --preview
	@echo "Sample study:  $(SAMPLE)/study/dicom (ground truth in $(SAMPLE)/study/truth)"
	@echo "Outputs:       $(SAMPLE)/output (synthetic_t1c/, uncertainty/, seg/, sr/, report.json)"
	@echo "Preview:       $(SAMPLE)/output/preview.png"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: setup
	@$(ULIMIT) $(BIN)/pytest

test: setup lint typecheck pytest

bench: setup
	@$(ULIMIT) $(BIN)/gadsynth bench --out bench-results

# The hostile-input suite: 300+ broken variants of a phantom study through the real CLI; table in hostile-results/.
hostile: setup
	@$(ULIMIT) $(BIN)/python -m tests.hostile.run --out hostile-results --jobs 2

# The container image (buildah; CPU flavour on a local Debian base unless FLAVOUR / BASE_IMAGE say otherwise).
image: system
	@deploy/build-image.sh

# holoscan-cli 4.2 (the last packager with `monai-deploy package`) in its own environment: its pins (packaging<26)
# cannot share one with GadSynth's (nilearn needs packaging>=26).
PACKAGE_VENV := .venv-package
$(PACKAGE_VENV)/.installed: constraints-package.txt
	$(PYTHON) -m venv $(PACKAGE_VENV)
	$(PACKAGE_VENV)/bin/pip install -q -c constraints-package.txt holoscan-cli
	@touch $@

package-venv: $(PACKAGE_VENV)/.installed

# The application folder `monai-deploy package` takes whole (where Docker exists): __main__.py, the packages and the
# pinned runtime requirements.
map-app: venv
	rm -rf build/map-app && mkdir -p build/map-app
	cp deploy/map/__main__.py build/map-app/
	cp -r app operators training build/map-app/
	find build/map-app -name __pycache__ -prune -exec rm -rf {} +
	$(BIN)/python deploy/requirements.py --flavour cpu > build/map-app/requirements.txt

# Regenerate deploy/map/app.json and pkg.json with the packager's own code (tests check they are current).
map-manifests: package-venv
	$(PACKAGE_VENV)/bin/python deploy/map_manifests.py

clean:
	rm -rf $(VENV) $(PACKAGE_VENV) $(SAMPLE) bench-results hostile-results .pytest_cache .mypy_cache .ruff_cache
