"""Write the README of an offline bundle (``bundle.sh`` runs it): what is in the
folder, with sizes and checksums, and the steps to bring chatq up from it."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path


def _size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def render(bundle: Path) -> str:
    models = sorted(bundle.glob("models/*.gguf"))
    images = sorted(bundle.glob("images/*.tar"))
    sums = {
        line.split()[1]: line.split()[0]
        for line in (bundle / "models" / "MANIFEST.sha256").read_text().splitlines()
        if line.strip()
    }
    rows = [f"| `models/{m.name}` | {_size(m)} | `{sums.get(m.name, '?')[:16]}…` |"
            for m in models]
    rows += [f"| `images/{i.name}` | {_size(i)} | `{i.name}.sha256` |" for i in images]
    no_images = "" if images else (
        "\n**This bundle has no images** (it was made where no Docker engine ran): "
        "load `chatq`, `chatq-worker`, `redis` and `mongo` images by other means.\n")
    return f"""# chatq offline bundle

Made {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Everything chatq needs in a closed
network: no file is fetched at run time.

| file | size | sha256 |
|---|---|---|
{chr(10).join(rows)}
{no_images}
## Bring chatq up

```sh
./restore.sh                 # verifies every checksum (refuses on mismatch), loads images
cp ops/env.example .env      # set MONGO_PASSWORD, FLOWER_BASIC_AUTH, CHATQ_API__KEYS
docker-compose up -d         # Redis, MongoDB, API, workers gpu0/gpu1, Flower
./smoke.sh                   # the registry checks out, /readyz, then one job end to end
```

`restore.sh` takes no arguments and works in this folder. To keep the models
elsewhere, run `CHATQ_MODELS_DIR=/srv/models ./restore.sh` and start compose with
the same `CHATQ_MODELS_DIR`. The registry (`ops/models.prod.toml`) maps each model
to its file under `/models`, its GPU queue, its llama.cpp options and sampling
defaults, and the ancestor routes to their models. Check it before starting:
`docker-compose run --rm --no-deps gpu0 python -m shared.registry check
/etc/chatq/models.toml` (every key and value, every file, the worker image's
llama.cpp build).

`smoke.sh` reads `CHATQ_URL` (default `http://127.0.0.1:8000`), `CHATQ_API_KEY`
and `CHATQ_SMOKE_TIMEOUT` (seconds, default 120); it checks the registry in the
running `api` container first (`CHATQ_SMOKE_CHECK` replaces that command, `skip`
skips it).

Try it in a browser: the chat playground at `/playground` and the API docs at
`/docs` (or `/redoc`) on port 8000; chatq serves them with everything they load.

Operators: Flower at port 5555 (basic auth), Prometheus metrics at `/metrics`,
queues at `/v1/queues`.
"""


if __name__ == "__main__":
    sys.stdout.write(render(Path(sys.argv[1])))
