#!/usr/bin/env bash
# The GPU checks of issue 6, prepared for a session that is lent a device machine (the `device`
# tool of the tool library: one H200, ~15 minutes of device time per task, nothing downloadable
# there). Its image has torch (CUDA), e3nn, torch-geometric, pytest and pytest-timeout, but not
# ase, sevenn, matscipy, vesin or braceexpand: those travel as wheels (~46 MB; the working tree
# and carried paths may be 64 MiB together).
#
#   bash benchmarks/device.sh fetch          # here, with PyPI: the wheels into .whl/ (git-ignored)
#   # then the device tool's run, from the repository root:
#   #   command: bash benchmarks/device.sh run     carry: [".whl"]     timeout_s: 500
#
# `run` writes into $OUT: nvidia-smi.txt, model_cuda.txt (ours against sevenn on the GPU,
# `model.py --device cuda`), sizes_cuda.txt (ours at ~1k, 10k and 50k atoms) and tests.txt (the
# whole test suite, where the calculator's default device is CUDA, so most calculator tests run
# on the GPU; 2026-12-04 on an H200 it took 150 s to over 200 s). Results of 2026-12-04:
# benchmarks/README.md, "On a GPU".
# Each step has its own time limit, so that a slow one leaves the others their share.
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
fetch)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
        ase==3.29.0 sevenn==0.13.0 braceexpand==0.1.7 matscipy==1.3.1 vesin==0.6.2
    du -sh .whl
    ;;
run)
    out="${OUT:-/tmp/device-out}"
    mkdir -p "$out"
    export PYTHONUNBUFFERED=1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    # the package itself, for its ASE plugin entry point (PEP 517 with the image's setuptools: the
    # legacy `setup.py develop` runs pip again, with build isolation, which needs the network);
    # without it, from the checkout
    export PYTHONPATH=/tmp/site
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --use-pep517 -e . \
        || export PYTHONPATH=/tmp/site:$PWD
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/nvidia-smi.txt"
    timeout 120 python3 benchmarks/model.py --device cuda --repeats 5 2>&1 | tee "$out/model_cuda.txt"
    timeout 80 python3 benchmarks/model.py --device cuda --sizes 1000 10000 50000 --no-reference --repeats 3 2>&1 \
        | tee "$out/sizes_cuda.txt"
    timeout 260 python3 -m pytest -q -p no:cacheprovider --timeout 120 tests 2>&1 | tee "$out/tests.txt" | tail -25
    ;;
*)
    echo "usage: bash benchmarks/device.sh fetch|run" >&2
    exit 2
    ;;
esac
