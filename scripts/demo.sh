#!/usr/bin/env bash
# `make demo`: index sample_data/ (photos, a video with sound, audio clips, a notes file) into a
# throw-away index and run a few example queries: text, image, sound, video moments, text lines.
# MMFIND_DEMO_MODEL picks the model (default: the real default model, downloaded on first use;
# `make demo MODEL=test-tiny` runs the same steps offline with random weights).
set -euo pipefail
cd "$(dirname "$0")/.."
index="${DEMO_INDEX:-$(mktemp -d)/mmfind-demo-index}"
model_args=()
if [ -n "${MMFIND_DEMO_MODEL:-}" ]; then
  model_args=(--model "$MMFIND_DEMO_MODEL")
fi
rm -rf "$index"
run() {
  echo
  echo "\$ $*"
  "$@"
}
if ! run mmfind index sample_data --index "$index" "${model_args[@]}"; then
  echo
  echo "The index step failed (see the message above). Without network access or cached"
  echo "weights, try the offline walk-through with random weights: make demo MODEL=test-tiny"
  exit 2
fi
run mmfind info --index "$index"
run mmfind query "a cat" --index "$index" -n 3 --table
run mmfind query "a cup of coffee" --index "$index" -n 3 --json
run mmfind query --image sample_data/rocket.jpg --index "$index" -n 3 --table
run mmfind query "a doorbell ringing" --index "$index" -n 3 --table
run mmfind query --audio sample_data/doorbell.flac --index "$index" -n 3 --table
run mmfind query "a rocket launch" --type video --all-moments --index "$index" -n 3 --table
run mmfind query "tax return 2023" --type text --index "$index" -n 2 --table
run mmfind query "outer space" --not "people" --index "$index" --paths -n 3
rm -rf "$index"
