# pc3d: the two commands of the README.
#   make demo   install into .venv and run the demo on the embedded synthetic data
#   make test   install into .venv and run the test suite (what CI runs)
#   make gpu-prep / gpu-check   prepare .gpu/ here, then check every CUDA path on a GPU machine (docs/gpu.md)
# Both are idempotent: a second run installs nothing when requirements.txt and setup.py are unchanged.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pc3d-installed
# Debian packages: libusb for `import open3d`, Mesa EGL for headless Open3D rendering.
APT_PACKAGES := libusb-1.0-0 libgl1 libegl1 libx11-6 libudev1 libegl-mesa0 libgl1-mesa-dri libgbm1
PYTEST_ARGS ?=

.PHONY: demo test install system-deps test-slow bench clean gpu-prep gpu-check

demo: install
	@$(PY) tools/demo.py

test: install
	@$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test-slow: install
	@$(VENV)/bin/pytest -q -m slow $(PYTEST_ARGS)

install: system-deps $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "warning: missing Debian packages:$$missing (run: sudo apt-get install$$missing); Open3D import/rendering may fail"; \
	  fi; \
	fi

$(STAMP): requirements.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing pc3d and its dependencies into $(VENV) (first time: ~1-2 min)"
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -r requirements.txt
	@# Waymo protos only: the package's declared dependencies would pull TensorFlow.
	@$(PY) -m pip install -q --no-deps waymo-open-dataset-tf-2-12-0==1.6.7
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e . > $(VENV)/pc3d-install.log 2>&1 \
	  || { cat $(VENV)/pc3d-install.log; exit 1; }
	@touch $(STAMP)

bench: install
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# GPU: `make gpu-prep` here (wheels + scans into .gpu/), then `make gpu-check` on the GPU machine (docs/gpu.md).
gpu-prep:
	@bash tools/gpu_prepare.sh

gpu-check:
	@bash tools/gpu_check.sh

clean:
	rm -rf $(VENV) build *.egg-info outputs
