# The pipeline's stages as file targets: a finished stage is not run again, and a changed
# config section or input re-runs exactly what depends on it.
#
#   make scrape train predict                      the demo competition, end to end
#   make train CONFIG=configs/x.yaml ARGS="train.epochs=2 model.name=resnet18"
#   make help                                      everything else

SHELL := /bin/bash
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
CONFIG ?= configs/digits.yaml
ARGS ?=
EXP ?=
PYTHON ?= python3
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# $(call shq,x): x as one shell word, quotes and spaces in it kept (CONFIG="my comp/it's.yaml")
shq = '$(subst ','\'',$(1))'
PIPELINE = $(PY) -m pipeline $(1) -c $(call shq,$(CONFIG)) $(ARGS) $(if $(EXP),$(call shq,train.experiment=$(EXP)))

STAGES := data scrape folds tune tune-report train lr-find experiments blend predict package rehearse push score submissions submit report
.DEFAULT_GOAL := help
.PHONY: help init venv test test-slow lint bench gpu-check clean $(STAGES)

help:
	@echo "A new competition: make init DIR=data/<competition> -> configs/<competition>.yaml (NAME=... to rename)"
	@echo "Stages (CONFIG=$(CONFIG), overrides in ARGS=\"key=value ...\", EXP=name: the experiment, default the config's stem):"
	@echo "  data      build the demo or check the competition files; decode and cache images"
	@echo "  scrape    download extra training images from scrape.sources"
	@echo "  folds     split the training rows into folds -> runs/<name>/folds.csv"
	@echo "  tune      Optuna search -> runs/<name>/<exp>/tune/best.yaml (run it overnight; WORKERS=N processes)"
	@echo "  tune-report  trials table, parameter importances, optimization history plot"
	@echo "  train     train per fold (OOF, CV score), then on all data (GPUS=0,1,... several GPUs)"
	@echo "  lr-find   fastai's learning-rate finder on fold 0 (plot + suggestion)"
	@echo "  experiments  the competition's experiments (EXP=name trains one), best CV first"
	@echo "  blend     weights for experiments (BLEND=\"a b c\", default all) on their OOF, scored by nested CV;"
	@echo "            METHOD=stack: trees on their OOF and the tabular columns (data.feature_columns)"
	@echo "  predict   write submissions/<name>/<stamp>_<models>_<cv>.csv (+ a ledger row); BLEND=<blend> a blend"
	@echo "  package   code competitions: the models predict would submit as a Kaggle dataset + offline notebook"
	@echo "  rehearse  run the packaged notebook here, offline, in a Kaggle-like tree; compare with predict, project its time"
	@echo "  push      upload the rehearsed package (Kaggle CLI), then submit the kernel version (package.submit)"
	@echo "  score     score the newest submission (or FILE=...) against the local solution file"
	@echo "  submissions  the ledger, best CV first"
	@echo "  submit    upload the newest submission (or FILE=...) with the Kaggle CLI"
	@echo "  report    plots and the run report"
	@echo "Other: test (fast suite), test-slow, lint, venv, clean (this experiment's runs/<name>/<experiment>),"
	@echo "       bench (re-runs benchmarks/ and rewrites BENCHMARKS.md's tables; ONLY=\"script.py ...\")"
	@echo "       gpu-check (on a CUDA machine: the GPU tests, the demos end to end, device_path.py, the executors on masks)"

venv: $(INSTALLED)

init: $(INSTALLED)
	@test -n "$(DIR)" || { echo "error: make init needs DIR=data/<competition>" >&2; exit 2; }
	$(PY) -m pipeline init $(call shq,$(DIR)) $(if $(NAME),--name $(call shq,$(NAME))) $(ARGS)

# Every package at its floor in pyproject.toml: the versions the suite runs on are the lowest it
# allows, so no floor is a promise nobody tested (tests/test_packaging.py holds them to it).
FLOORS := $(VENV)/floors.txt
$(INSTALLED): $(ROOT)/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) $(ROOT)/tests/floors.py $(ROOT)/pyproject.toml > $(FLOORS)
	$(PY) -m pip install --quiet -c $(FLOORS) -e '$(ROOT)[dev]'
	touch $@

# Stage goals need this config's file names: `pipeline makevars` writes them as a Make fragment
# (and refreshes the per-stage config stamps), which is then included.
ifneq ($(filter $(STAGES) clean,$(MAKECMDGOALS)),)
  $(shell $(MAKE) -q -f $(ROOT)/Makefile venv || $(MAKE) --no-print-directory -f $(ROOT)/Makefile venv >&2)
  VARS_MK := runs/.make/$(shell printf '%s' $(call shq,$(CONFIG) $(ARGS) $(EXP)) | md5sum | cut -c1-16).mk
  $(shell $(call PIPELINE,makevars) -o $(VARS_MK))
  ifneq ($(.SHELLSTATUS),0)
    $(error the config could not be read (see the error above))
  endif
  include $(VARS_MK)
endif

data: $(DATA_OUT)
# INPUTS_STAMP lists the competition's files: an edited label or a moved image runs data again.
$(DATA_OUT): $(DATA_STAMP) $(INPUTS_STAMP)
	$(call PIPELINE,data)

scrape: $(EXTRA_CSV)
$(EXTRA_CSV): $(DATA_OUT) $(SCRAPE_STAMP)
	$(call PIPELINE,scrape)

folds: $(FOLDS_CSV)
$(FOLDS_CSV): $(DATA_OUT) $(FOLDS_STAMP) $(EXTRA_DEP)
	$(call PIPELINE,folds)

# WORKERS=N runs N worker processes on the same study (cores shared out, one GPU each).
WORKERS ?= 1
tune: $(BEST_YAML)
$(BEST_YAML): $(FOLDS_CSV) $(TUNE_STAMP)
	$(call PIPELINE,tune) --workers $(WORKERS)

tune-report: $(INSTALLED)
	$(call PIPELINE,tune-report)

# GPUS=0,1,2,3 trains on those GPUs: DDP per fold or one fold per GPU (train.distributed).
GPUS ?=
train: $(CV_JSON)
# The train stamp holds best.yaml's settings when there is one: training never starts a search.
$(CV_JSON): $(FOLDS_CSV) $(TRAIN_STAMP)
	$(call PIPELINE,train) $(if $(GPUS),--gpus $(GPUS))

lr-find: $(FOLDS_CSV)
	$(call PIPELINE,lr-find)

# BLEND="a b c" blends those experiments (default: every finished one); `make predict BLEND=<blend>`
# submits a blend instead of this experiment. METHOD=stack fits trees on their OOF predictions and
# data.feature_columns instead of weights (blend.method).
BLEND ?=
METHOD ?=
comma := ,
blend: $(FOLDS_CSV)
	$(call PIPELINE,blend) $(if $(BLEND),'blend.experiments=[$(subst $() ,$(comma),$(strip $(BLEND)))]') \
		$(if $(METHOD),blend.method=$(METHOD))

# Each run writes a new, time-stamped submission: predict is not a file target.
predict: $(if $(BLEND),$(FOLDS_CSV),$(CV_JSON))
	$(call PIPELINE,predict) $(if $(BLEND),predict.blend=$(BLEND))

# What predict would submit (BLEND=<blend> a blend), as package/<name>/: a Kaggle dataset and kernel.
package: $(if $(BLEND),$(FOLDS_CSV),$(CV_JSON))
	$(call PIPELINE,package) $(if $(BLEND),predict.blend=$(BLEND))

rehearse push: $(INSTALLED)
	$(call PIPELINE,$@)

# FILE=submissions/<name>/<file>.csv picks one; the newest by default.
score submit: $(INSTALLED)
	$(call PIPELINE,$@) $(if $(FILE),--file $(call shq,$(FILE)))

experiments submissions report: $(INSTALLED)
	$(call PIPELINE,$@)

clean:
	rm -rf $(EXPERIMENT_DIR)

test: $(INSTALLED)
	$(PY) -m pytest -q

test-slow: $(INSTALLED)
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]  # 5: no slow tests collected

lint: $(INSTALLED)
	$(PY) -m ruff check $(ROOT)/pipeline $(ROOT)/tests $(ROOT)/benchmarks

bench: $(INSTALLED)
	$(PY) $(ROOT)/benchmarks/_run.py $(ONLY)

gpu-check: $(INSTALLED)
	$(PY) $(ROOT)/benchmarks/gpu_check.py
