# Set-up is two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch 2.13.0 installs quickly on our machines; any torch>=2.4 works.
TORCH_VERSION ?= 2.13.0
# torchvision (ResNet/VGG tests and benchmarks) must match torch exactly; tests skip without it.
TORCHVISION_VERSION ?= 0.28.0

.PHONY: venv demo test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[test,demo,text]"
	if $(PY) -c "import sys, torch; sys.exit(not torch.__version__.startswith('$(TORCH_VERSION)'))"; then \
		$(PIP) install -q "torchvision==$(TORCHVISION_VERSION)"; \
	else echo "torch is not $(TORCH_VERSION): torchvision not installed, its tests will skip"; fi
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m xattr.demo

test: venv
	$(PY) -m pytest -q -p no:cacheprovider tests

$(VENV)/.bench: $(VENV)/.installed
	$(PIP) install -q -e ".[bench]"
	# LXT (AttnLRP's authors' library) without its dependencies: it declares bitsandbytes, open_clip
	# and zennit, none of which its efficient mode needs here (transformers is in the text extra)
	$(PIP) install -q --no-deps "lxt==2.1"
	touch $@

bench: $(VENV)/.bench
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) xattr-demo-output
