#!/usr/bin/env bash
# Restore chatq from this bundle: no arguments, run from the bundle folder.
#
# 1. verifies every checksum (images/*.tar.sha256, models/MANIFEST.sha256) and
#    refuses, naming the file, on any mismatch or missing file;
# 2. loads the images into Docker (when images are bundled);
# 3. places the models in $CHATQ_MODELS_DIR (default: ./models, where they are)
#    and verifies the copies.
# Then: cp ops/env.example .env, fill in the secrets, docker-compose up -d, ./smoke.sh
set -euo pipefail
cd "$(dirname "$0")"

fail() { echo "restore: REFUSING: $*" >&2; exit 1; }

# verify DIR MANIFEST: every "sha256  name" line of MANIFEST matches DIR/name
verify() {
  local dir=$1 manifest=$2 expected name actual
  [ -s "$manifest" ] || fail "checksum file $manifest is missing or empty"
  while read -r expected name; do
    [ -n "$name" ] || continue
    [ -f "$dir/$name" ] || fail "$dir/$name is missing (listed in $manifest)"
    actual=$(sha256sum "$dir/$name" | cut -d' ' -f1)
    [ "$actual" = "$expected" ] ||
      fail "$dir/$name does not match its checksum (expected $expected, got $actual)"
    echo "restore: ok  $dir/$name"
  done < "$manifest"
}

verify models models/MANIFEST.sha256
shopt -s nullglob
tars=(images/*.tar)
for tar in "${tars[@]}"; do
  [ -f "$tar.sha256" ] || fail "$tar has no $tar.sha256"
  verify . "$tar.sha256"
done
for sum in images/*.tar.sha256; do
  [ -f "${sum%.sha256}" ] || fail "${sum%.sha256} is missing (listed in $sum)"
done

if [ "${#tars[@]}" -gt 0 ]; then
  command -v docker >/dev/null || fail "docker is not installed; cannot load ${tars[*]}"
  for tar in "${tars[@]}"; do
    echo "restore: docker load -i $tar"
    docker load -i "$tar"
  done
else
  echo "restore: no images in this bundle (it was made without a Docker engine)"
fi

target=${CHATQ_MODELS_DIR:-./models}
if [ "$(cd "$(dirname "$target")" 2>/dev/null && pwd)/$(basename "$target")" != "$(pwd)/models" ]; then
  mkdir -p "$target"
  while read -r _ name; do
    [ -n "$name" ] || continue
    echo "restore: placing $name in $target"
    cp "models/$name" "$target/$name.partial"
    mv "$target/$name.partial" "$target/$name"
  done < models/MANIFEST.sha256
  verify "$target" models/MANIFEST.sha256
fi
echo "restore: done. Models in $target."
echo "Next: cp ops/env.example .env (fill in the secrets); CHATQ_MODELS_DIR=$target docker-compose up -d; ./smoke.sh"
