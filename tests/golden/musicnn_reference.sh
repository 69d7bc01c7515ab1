#!/usr/bin/env bash
# Reference tag activations from musicnn's own TensorFlow code, for tests/test_tagger.py's golden test.
#
# Builds a throwaway virtualenv (tensorflow-cpu 2.15 and numpy<2, which musicnn's TF1-style graph needs and
# the project cannot install beside its own stack), installs the same musicnn wheel the project reads its
# weights from and the project's librosa and soundfile (so both sides decode and resample the previews alike),
# then runs musicnn.extractor.extractor(..., model="MTT_musicnn") on the four real previews in
# ../shared/data/audio/ and writes tests/golden/musicnn_mtt.json. Run once by hand; the JSON is committed.
#
#   bash tests/golden/musicnn_reference.sh [VENV_DIR]     # default /tmp/musicnn-tf-env
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
env_dir="${1:-/tmp/musicnn-tf-env}"
pin() { grep -E "^$1==" "$root/constraints.txt"; }
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
test -x "$env_dir/bin/python" || "$PYTHON" -m venv "$env_dir"
"$env_dir/bin/pip" install --quiet --upgrade pip
"$env_dir/bin/pip" install --quiet "tensorflow-cpu==2.15.*" "numpy<2" "$(pin librosa)" "$(pin soundfile)"
"$env_dir/bin/pip" install --quiet --no-deps "$(pin musicnn)"
"$env_dir/bin/python" "$here/musicnn_reference.py" "$root/../shared/data/audio" "$here/musicnn_mtt.json"
