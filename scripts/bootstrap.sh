# Sourced by scripts/serve and scripts/test: make ./.venv and install the project into it.
# Usage: . scripts/bootstrap.sh EXTRAS   (EXTRAS: "" for the daemon, "test" for the test tools)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"  # not SATELLITE_ASR_*: those are daemon settings, and unknown ones stop it
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# torch is pinned in pyproject.toml (silero-vad requires it): pip takes the CPU build from the
# machine's local wheel directory where one exists, as configured in pip's own config.
target="$ROOT"
[ -n "${1:-}" ] && target="$ROOT[$1]"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$target"
if [ "${1:-}" = "test" ]; then
    # LiveKit's Speechmatics plugin pins speechmatics-agent-stt~=0.1.0, which no resolver installs beside
    # Pipecat's ~=0.3.0 (pyproject.toml); it runs on 0.3, so it comes without its pins.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "livekit-plugins-speechmatics==1.8.9"
    # Microsoft's JavaScript Speech SDK for tests/test_azure_js_sdk.py, at the version
    # tests/node/package-lock.json pins; without npm those tests skip (fail with CI=true), saying so.
    if command -v npm >/dev/null; then
        (cd "$ROOT/tests/node" && npm ci --silent --no-audit --no-fund)
    fi
fi
