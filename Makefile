# retinaedge — `make demo` and `make test` set up everything on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYFILES_STAMP := $(VENV)/.pyfiles
TYPECHECK := .typecheck
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
TRT_STUBS := tensorrt-stubs==10.13.0.35.1
export OMP_NUM_THREADS ?= 2

.PHONY: help venv demo test lint typecheck pytest gpu-check bench clean

help:
	@echo "make demo       whole pipeline on synthetic data (CPU, <=15 min on 2 cores)"
	@echo "make test       ruff + mypy + import contracts + pytest (CPU)"
	@echo "make gpu-check  cuda/tensorrt tests + engines + report (GPU host with TensorRT)"
	@echo "make bench      benchmarks/ (long; writes benchmarks/out/)"

venv: $(STAMP) $(PYFILES_STAMP)

# torch first (pinned: served from local disk here), then the project editable in *strict* mode: a link
# tree under build/ that mypy and import-linter can see (the default mode's import hook hides it).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[train,export,validate,video,dev]' --config-settings editable_mode=strict
	$(PY) -c "import onnxruntime as o; assert 'CPUExecutionProvider' in o.get_available_providers()"
	touch $@

# strict editable installs only see modules that existed at install time: re-link when the .py set changes
$(PYFILES_STAMP): $(STAMP) FORCE
	@list=$$(find runtime engines train export cli -name '*.py' | sort | sha1sum); \
	if [ "$$list" != "$$(cat $@ 2>/dev/null)" ]; then \
	  echo "re-linking editable install (module set changed)"; \
	  $(PIP) install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict && echo "$$list" > $@; \
	fi
FORCE:

# tensorrt-stubs live OUTSIDE the venv (inside, `import tensorrt` would succeed and break ModelOpt).
# The wheel holds tensorrt/__init__.pyi and tensorrt_bindings/{__init__,tensorrt}.pyi (TRT 10.13's real API);
# patched here (docs/TENSORRT.md "Python bindings, stubs and the CUDA side"): parameters named `in` (a keyword), `add_scale_nd`'s required `channel_axis`
# after defaulted ones, and `import tensorrt_libs` (a runtime-only package with no stubs). The last step
# parses every .pyi so a patch that stops matching fails here, not as 500 mypy errors.
$(TYPECHECK)/.ready:
	rm -rf $(TYPECHECK)
	$(PIP) install -q --no-deps --target $(TYPECHECK) $(TRT_STUBS)
	sed -i -E 's/([(,] *)in: /\1in_: /g' $(TYPECHECK)/tensorrt_bindings/tensorrt.pyi
	sed -i -E 's/(def add_scale_nd\(.*channel_axis: int)\)/\1 = 0)/' $(TYPECHECK)/tensorrt_bindings/tensorrt.pyi
	sed -i -E '/^import tensorrt_libs( |$$)/d' $(TYPECHECK)/tensorrt/__init__.pyi $(TYPECHECK)/tensorrt_bindings/__init__.pyi
	$(PY) -c "import ast, pathlib, sys; [ast.parse(p.read_text(), str(p)) for p in pathlib.Path(sys.argv[1]).rglob('*.pyi')]" $(TYPECHECK)
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# `mypy -p` does not descend into the strict-mode link tree (symlinks), so name every module
MYPY_MODULES = $(shell find runtime engines export deploy -name '*.py' | sort | sed -e 's/\.py$$//' -e 's/\/__init__$$//' -e 's/\//./g' -e 's/^/-m retinaedge./')
typecheck: venv $(TYPECHECK)/.ready
	$(VENV)/bin/mypy $(MYPY_MODULES)

pytest: venv
	$(PY) -m pytest -q -p no:cacheprovider --timeout 900; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test: lint typecheck pytest

demo: venv
	$(VENV)/bin/retinaedge demo --out demo_out

gpu-check: venv
	bash scripts/gpu_check.sh

bench: venv
	bash benchmarks/run_all.sh

clean:
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache $(TYPECHECK)
