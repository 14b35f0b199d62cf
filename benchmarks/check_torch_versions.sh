#!/usr/bin/env bash
# Check the declared torch range: for each torch release, a fresh venv with exactly that torch,
# `import mixelbo`, and mixelbo's core tests (the math, the modules, the errors, the fused and
# eager kernels, torch.compile tracing).
#
# Not part of CI: every venv downloads torch and its CUDA libraries from PyPI (about 5 GB each,
# 3-4 minutes on a fast link). Run it by hand when the torch floor or the kernels change.
#
#   benchmarks/check_torch_versions.sh                  # the floor, a middle release, the newest
#   benchmarks/check_torch_versions.sh 2.4.0 2.9.1      # any releases
#
# Environment: PYTHON (the interpreter for the venvs, default python3), VENVS (where the venvs
# go, default /tmp/mixelbo-torch-venvs; an existing venv for a release is reused), KEEP=0 (delete
# each venv after its run). Prints one line per release and exits non-zero if any release fails.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENVS="${VENVS:-/tmp/mixelbo-torch-venvs}"
KEEP="${KEEP:-1}"
if [ "$#" -gt 0 ]; then VERSIONS=("$@"); else VERSIONS=(2.4.0 2.6.0 2.14.1); fi

# The core tests. Each file runs in its own pytest process: on torch 2.4 Inductor links its C++
# kernels with -ffast-math, which turns on flush-to-zero for the whole process once one is
# loaded, and hypothesis then refuses to draw subnormal floats in tests/test_properties.py.
CORE_TESTS=(
  tests/test_functional_oracles.py
  tests/test_properties.py
  tests/test_errors.py
  tests/test_modules.py
  tests/test_elbo.py
  tests/test_fused.py
  tests/test_compile_vae.py
)

mkdir -p "$VENVS"
summary=()
status=0
for version in "${VERSIONS[@]}"; do
  venv="$VENVS/torch-$version"
  log="$VENVS/torch-$version.log"
  echo "== torch $version: $venv (log: $log)"
  {
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q "torch==$version" einops typing-extensions numpy \
      pytest pytest-timeout hypothesis &&
      "$venv/bin/pip" install -q --no-deps -e "$ROOT"
  } >"$log" 2>&1 || {
    summary+=("torch $version: INSTALL FAILED (see $log)")
    status=1
    continue
  }
  if ! "$venv/bin/python" -c "import torch, mixelbo, mixelbo._fused as f; \
      assert torch.__version__.split('+')[0] == '$version', torch.__version__; \
      print('import ok: torch', torch.__version__, '| custom ops registered:', f.ops_registered())" \
      2>&1 | tee -a "$log"; then
    summary+=("torch $version: IMPORT FAILED (see $log)")
    status=1
    continue
  fi
  failed=()
  for test in "${CORE_TESTS[@]}"; do
    out="$(cd "$ROOT" && "$venv/bin/python" -m pytest -q -p no:cacheprovider "$test" 2>&1)"
    rc=$?
    echo "$out" >>"$log"
    line="$(echo "$out" | tail -n 1)"
    echo "   $test: $line"
    [ "$rc" -eq 0 ] || failed+=("$test")
  done
  if [ "${#failed[@]}" -eq 0 ]; then
    summary+=("torch $version: import ok, core tests passed")
  else
    summary+=("torch $version: FAILED ${failed[*]} (see $log)")
    status=1
  fi
  [ "$KEEP" = "1" ] || rm -rf "$venv"
done

echo
echo "core tests: ${CORE_TESTS[*]}"
printf '%s\n' "${summary[@]}"
exit "$status"
