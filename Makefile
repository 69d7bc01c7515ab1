# make demo   set up .venv, then run the whole pipeline on a generated catalogue; services stay up
# make test   set up .venv, then run the test suite (what CI runs)
# make stop   stop Serve, Ray and the MLflow server started by the demo
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test stop clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	# the tagger's weights (hitmodels/tagger.py); its own dependency pins (TensorFlow 1.x era) are not ours
	$(BIN)/pip install --quiet --no-deps -c constraints.txt musicnn
	bash cluster/install-haproxy.sh
	touch $(STAMP)

demo: setup
	$(BIN)/hitmusic demo

test: setup
	$(BIN)/python -m pytest -q

stop:
	$(BIN)/hitmusic down

clean: stop
	rm -rf .hitmusic
