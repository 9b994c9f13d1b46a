# Fresh-machine entry points. Each target creates/updates .venv itself.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ctmil-installed
OUT    ?= out/demo

.PHONY: install demo test bench results pictures clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch is pinned to 2.13.0 (the CPU wheel); installing it first keeps pip from resolving a CUDA build.
$(STAMP): $(PY) setup.cfg setup.py
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ctmil demo --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) bench/preprocess.py
	$(PY) bench/train_step.py
	$(PY) bench/infer.py

# The PNGs the docs embed (docs/img/, not tracked): made from phantoms and from the demo's own pages
pictures: demo
	$(PY) docs/make_layers.py
	$(PY) docs/make_operating_point_pictures.py
	$(PY) docs/make_crop_pictures.py
	$(PY) docs/make_mask_pictures.py --before bf1af3b
	$(PY) docs/make_report_pictures.py
	$(PY) docs/make_demo_pictures.py $(OUT)
	$(PY) docs/make_pacs_pictures.py --model $(OUT)/cv/model.pt

# Settings A-D on the real Per-COVID-19 sample in ../shared/data (about an hour on 2 cores) -> docs/results.md
results: $(STAMP)
	$(PY) docs/make_results.py

clean:
	rm -rf $(VENV) out *.egg-info
