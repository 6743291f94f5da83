"""Keys managed without a restart (issue 26), through the HTTP API and ``python -m ops.keys``:
an operator makes a key for a tenant (shown once, stored only as a digest), the key works
as that tenant on every API process, a revoked key stops working on another API process
without a restart, and a tenant's rate limits change while the API runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pymongo
import pytest

from ops.devstack import free_port
from tests.conftest import Chatq, new_stack, start_chatq
from tests.helpers import hi, submit

ADMIN = "key-operator-0123456789"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chatq]:
    stack = new_stack(tmp_path_factory.mktemp("keys"), "stack")
    stack.env["CHATQ_API__KEYS"] = "ka=alpha"
    stack.env["CHATQ_API__ADMIN_KEYS"] = ADMIN
    try:
        yield start_chatq(stack)
    finally:
        stack.stop()


def until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Wait for a state (the key cache holds a lookup for seconds, not a fixed time)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def ops_keys(chatq: Chatq, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **chatq.stack.env}
    return subprocess.run([sys.executable, "-m", "ops.keys", *args], env=env, text=True,
                          capture_output=True, check=False, timeout=120)


def test_only_an_operator_manages_keys(keyed: Chatq) -> None:
    with keyed.client(key="ka") as alpha, keyed.client(key=None) as nobody:
        assert alpha.post("/v1/admin/keys", json={"tenant": "x"}).status_code == 403
        assert alpha.get("/v1/admin/keys").status_code == 403
        assert nobody.get("/v1/admin/keys").status_code == 403
    with keyed.client(key=ADMIN) as admin:
        bad = admin.post("/v1/admin/keys", json={"tenant": "a b"})
        assert bad.status_code == 422 and "tenant" in bad.text
        assert admin.delete("/v1/admin/keys/0123456789abcdef").status_code == 404


def test_a_made_key_works_as_its_tenant_everywhere_until_revoked(keyed: Chatq) -> None:
    with keyed.client(key=ADMIN) as admin:
        made = admin.post("/v1/admin/keys", json={"tenant": "omega", "name": "ci"})
        assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert key.startswith("sk-chatq-") and made.json()["tenant"] == "omega"
    # stored only as a digest: no document holds the key
    with pymongo.MongoClient(keyed.stack.env["CHATQ_MONGO_URL"]) as store:
        docs = list(store[keyed.stack.env.get("CHATQ_MONGO_DB", "chatq")]["api_keys"].find())
    assert docs and key not in json.dumps(docs, default=str)
    second = keyed.stack.start_api(port := free_port())
    try:
        with keyed.client(key=key) as omega, keyed.client(key="ka") as alpha, \
                httpx.Client(base_url=f"http://127.0.0.1:{port}",
                             headers={"Authorization": f"Bearer {key}"}) as elsewhere:
            job = submit(omega, hi(max_tokens=2))
            assert alpha.get(f"/v1/jobs/{job['id']}").status_code == 404  # omega's own
            assert elsewhere.get(f"/v1/jobs/{job['id']}").status_code == 200
            with keyed.client(key=ADMIN) as admin:
                listed = admin.get("/v1/admin/keys", params={"tenant": "omega"}).json()
                assert key not in json.dumps(listed)
                [entry] = listed["data"]
                assert entry["last_used_at"] is not None
                revoked = admin.delete(f"/v1/admin/keys/{entry['id']}")
                assert revoked.status_code == 200 and revoked.json()["revoked_at"]
            until(lambda: elsewhere.get(f"/v1/jobs/{job['id']}").status_code == 401,
                  "the other API process still takes the revoked key")
            assert omega.get(f"/v1/jobs/{job['id']}").status_code == 401
    finally:
        second.stop()
        keyed.stack.procs.remove(second)


def test_the_cli_makes_keys_and_sets_limits_that_apply_at_once(keyed: Chatq) -> None:
    made = ops_keys(keyed, "create", "sigma", "--name", "from the shell")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["key"]
    listing = ops_keys(keyed, "list", "--tenant", "sigma")
    assert listing.returncode == 0 and key not in listing.stdout
    assert json.loads(listing.stdout.splitlines()[0])["name"] == "from the shell"
    with keyed.client(key=key) as sigma:
        assert submit(sigma, hi(max_tokens=2))["status"] == "queued"
        limited = ops_keys(keyed, "set-limits", "sigma", "--rpm", "1")
        assert limited.returncode == 0, limited.stderr

        def refused() -> bool:
            response = sigma.post("/v1/jobs", json=hi(max_tokens=2),
                                  headers={"Prefer": "respond-async"})
            return response.status_code == 429 and response.headers.get(
                "x-ratelimit-limit-requests") == "1"

        until(refused, "the tenant's new limit did not apply")
    assert ops_keys(keyed, "revoke", "nope-not-a-key").returncode == 1
