# Two entry points that work on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export GRADIO_ANALYTICS_ENABLED ?= False
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export NO_ALBUMENTATIONS_UPDATE ?= 1

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Editable install with the test extras; redone when pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# The main jobs on the bundled defaults: forecast the future of a real NREL TMY3 weather file with the
# bundled iTransformer weights (CSV + plot in outputs/forecast/), super-resolve (light HAT x2) and
# derain (light DRSformer) the bundled sample photos (outputs/restoration/{sr,derain}/).
demo: $(STAMP)
	$(BIN)/vitsuite models
	$(BIN)/vitsuite-forecast predict -o outputs/forecast
	$(BIN)/vitsuite-restore predict --task sr -o outputs/restoration/sr
	$(BIN)/vitsuite-restore predict --task derain -o outputs/restoration/derain

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
