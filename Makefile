# diffuserve — `make run` serves the bundled digits and mnist models in embedded mode; `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
export HOST PORT

.PHONY: setup run test lint format openapi smoke worker bench tiny-models tiny-digits mnist clean

setup: $(VENV)/.installed  ## create .venv and install the pinned dependencies (idempotent)

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .  # the `diffuserve` command line
	touch $@

run: setup  ## embedded mode on $(HOST):$(PORT): in-process queue, local disk, the digits model
	$(BIN)/python -m uvicorn --factory serve:create_app --host $(HOST) --port $(PORT)

worker: setup  ## a Celery worker (distributed mode: needs BROKER_URL)
	$(BIN)/celery -A worker.app worker --pool solo --loglevel INFO

lint: setup  ## ruff check, ruff format --check and the import contracts (lint-imports), all in pyproject.toml
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache --no-logo

format: setup  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: setup lint  ## lint, the spec, then the whole suite (the tests start their own redis-server and moto_server)
	$(BIN)/python scripts/export_openapi.py --check
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout 900 --durations 15

openapi: setup  ## regenerate openapi/openapi.json from the app
	$(BIN)/python scripts/export_openapi.py

smoke:  ## curl smoke test against a running service (BASE=http://127.0.0.1:8000)
	bash scripts/smoke.sh $(or $(BASE),http://$(HOST):$(PORT))

bench: setup  ## benchmark tables (see bench/)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/ddpm_quality.py
	$(BIN)/python bench/pipelines.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/gpu.py $(if $(shell $(BIN)/python -c "import torch;print(torch.cuda.is_available())" | grep True),,--smoke)

tiny-models: setup  ## tiny random pipelines of every kind into DIR (default models-tiny), then: MODELS_DIR=DIR make run
	$(BIN)/python -m tests.fixtures.tiny $(or $(DIR),models-tiny)

tiny-digits: setup  ## retrain the bundled digits model (the command in models/digits/README.md)
	$(BIN)/python -m core.ddpm train --dataset digits --upsample nearest --out models/digits --max-steps 3500 \
	  --batch-size 128 --learning-rate 1e-3 --warmup-steps 200 --seed 0 --threads 1 --guidance-scale 1.5 \
	  --checkpoint-every 250

MNIST_DATA ?= ../shared/data/mnist
MNIST_STEPS ?= 4500
MNIST_ARGS = --dataset mnist --data-root $(MNIST_DATA) --resolution 28 --attention-resolutions 7 --objective flow \
	  --out models/mnist --batch-size 128 --learning-rate 1e-3 --warmup-steps 200 --seed 0 --bf16 --guidance-scale 2.0

mnist: setup  ## retrain the bundled mnist model (models/mnist/README.md): 600 steps, then resumed to MNIST_STEPS
	$(BIN)/python -m core.ddpm train $(MNIST_ARGS) --max-steps 600 --checkpoint-every 200 --threads 1
	$(BIN)/python -m core.ddpm train $(MNIST_ARGS) --max-steps $(MNIST_STEPS) --checkpoint-every 250 --threads 2 \
	  --default-steps 20

clean:
	rm -rf $(VENV) data .pytest_cache
