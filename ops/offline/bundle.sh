#!/usr/bin/env bash
# Prepare one folder to carry into a closed network and bring chatq up there.
#
#   ops/offline/bundle.sh OUTDIR [MODEL.gguf ...]
#
# OUTDIR gets: images/*.tar with a .sha256 each (docker save; skipped with a note
# when no Docker engine answers), models/*.gguf with models/MANIFEST.sha256,
# docker-compose.yml, ops/ (production registry, env example), restore.sh,
# smoke.sh and a generated README.md. Without MODEL arguments the GGUF files of
# the registry in $CHATQ_REGISTRY (default: ops/models.prod.toml if its files
# exist here, else the demo registry) are bundled.
#
# Environment: CHATQ_BUNDLE_IMAGES (space-separated image names to export),
# PYTHON (the interpreter that can import chatq; default .venv/bin/python).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:?usage: bundle.sh OUTDIR [MODEL.gguf ...]}
shift
python=${PYTHON:-$root/.venv/bin/python}
images=${CHATQ_BUNDLE_IMAGES:-"chatq:0.1.0 chatq-worker:0.1.0-cuda redis:7.2-bookworm mongo:7.0"}

mkdir -p "$out/images" "$out/models" "$out/ops"
out=$(cd "$out" && pwd)

# --- models -------------------------------------------------------------------
if [ "$#" -eq 0 ]; then
  mapfile -t models < <(cd "$root" && "$python" -m ops.offline.registry_files)
else
  models=("$@")
fi
[ "${#models[@]}" -gt 0 ] || { echo "bundle: no model file to bundle" >&2; exit 1; }
: > "$out/models/MANIFEST.sha256.tmp"
for model in "${models[@]}"; do
  [ -f "$model" ] || { echo "bundle: model file not found: $model" >&2; exit 1; }
  name=$(basename "$model")
  echo "bundle: model $name ($(du -h "$model" | cut -f1))"
  cp "$model" "$out/models/$name"
  (cd "$out/models" && sha256sum "$name") >> "$out/models/MANIFEST.sha256.tmp"
done
mv "$out/models/MANIFEST.sha256.tmp" "$out/models/MANIFEST.sha256"

# --- images -------------------------------------------------------------------
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  for image in $images; do
    file="images/$(printf '%s' "$image" | tr '/:' '__').tar"
    docker image inspect "$image" >/dev/null 2>&1 || {
      echo "bundle: image $image is not here; build or pull it first (docker-compose build)" >&2
      exit 1
    }
    echo "bundle: image $image -> $file"
    docker save -o "$out/$file" "$image"
    (cd "$out" && sha256sum "$file" > "$file.sha256")
  done
else
  echo "bundle: no Docker engine answers here: images NOT exported" \
       "(run this again where one does; models, compose and scripts are bundled)"
fi

# --- compose, registry, scripts, README ---------------------------------------
cp "$root/docker-compose.yml" "$out/"
cp "$root/ops/models.prod.toml" "$root/ops/env.example" "$root/ops/logging.json" "$out/ops/"
cp "$here/restore.sh" "$here/smoke.sh" "$out/"
chmod +x "$out/restore.sh" "$out/smoke.sh"
"$python" "$here/readme.py" "$out" > "$out/README.md"
echo "bundle: ready in $out"
