"""Keys managed without a restart (issue 26), through the HTTP API and ``python -m ops.keys``:
an operator makes a key for a tenant (shown once, stored only as a digest), the key works
as that tenant on every API process, a revoked key stops working on another API process
without a restart, and a tenant's rate limits change while the API runs. A key's default
webhook (issue 24) gets the end of its batches and jobs that name none, signed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pymongo
import pytest

from ops.devstack import free_port
from shared.webhooks import sign
from tests.conftest import Chatq, new_stack, start_chatq
from tests.helpers import Receiver, hi, submit

ADMIN = "key-operator-0123456789"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chatq]:
    stack = new_stack(tmp_path_factory.mktemp("keys"), "stack")
    stack.env["CHATQ_API__KEYS"] = "ka=alpha"
    stack.env["CHATQ_API__ADMIN_KEYS"] = ADMIN
    # Keys are set, so webhooks may not reach private addresses: but the tests' receiver.
    stack.env["CHATQ_WEBHOOKS__ALLOW_HOSTS"] = '["127.0.0.1"]'
    try:
        yield start_chatq(stack, with_webhooks=True)
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


# --- a key's default webhook ---------------------------------------------------------

BAD_WEBHOOKS = ("not a url", "http://10.1.2.3/hook")  # no URL; a private address


def test_a_keys_default_webhook_gets_the_end_of_its_batches_and_jobs_signed(
        keyed: Chatq) -> None:
    with keyed.client(key=ADMIN) as admin:
        made = admin.post("/v1/admin/keys", json={"tenant": "hooked"}).json()
        key, key_id = made["key"], made["id"]
        assert made["webhook"] is None
        for url in BAD_WEBHOOKS:
            bad = admin.put(f"/v1/admin/keys/{key_id}/webhook", json={"webhook": url})
            assert bad.status_code == 422, bad.text
            assert bad.json()["error"]["details"][0]["field"] == "webhook"
        unknown = admin.put("/v1/admin/keys/0123456789abcdef/webhook", json={"webhook": None})
        assert unknown.status_code == 404
        with Receiver() as hook:
            done = admin.put(f"/v1/admin/keys/{key_id}/webhook", json={"webhook": hook.url})
            assert done.status_code == 200 and done.json()["webhook"] == hook.url
            listed = admin.get("/v1/admin/keys", params={"tenant": "hooked"}).json()["data"]
            assert listed[0]["webhook"] == hook.url
            sdk = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key=key, max_retries=0)
            line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "smollm2-135m", "max_tokens": 2, "temperature": 0,
                             "messages": [{"role": "user", "content": "Hi"}]}}
            upload = sdk.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode())),
                                      purpose="batch")
            batch = sdk.batches.create(input_file_id=upload.id, completion_window="24h",
                                       endpoint="/v1/chat/completions")  # no webhook named
            with keyed.client(key=key) as hooked:
                job = submit(hooked, hi(max_tokens=2))  # nor here
            until(lambda: sdk.batches.retrieve(batch.id).status == "completed",
                  "the batch did not complete", timeout=300)
            deliveries = hook.wait(2, timeout=120)
    secret = str(keyed.redis().get("chatq:webhook-secret:hooked"))
    for delivery in deliveries:
        headers = delivery.headers
        assert headers["webhook-signature"] == sign(
            secret, headers["webhook-id"], int(headers["webhook-timestamp"]), delivery.body)
    bodies = [json.loads(d.body) for d in deliveries]
    [event] = [b for b in bodies if b.get("object") == "event"]  # the batch's (OpenAI's)
    [ended] = [b for b in bodies if b.get("object") != "event"]  # the job, as GET shows it
    assert (event["type"], event["data"]["id"]) == ("batch.completed", batch.id)
    assert (ended["id"], ended["status"]) == (job["id"], "succeeded")


def test_the_cli_sets_and_clears_a_keys_default_webhook(keyed: Chatq) -> None:
    made = ops_keys(keyed, "create", "tau")
    assert made.returncode == 0, made.stderr
    key_id = json.loads(made.stdout)["id"]
    for url in BAD_WEBHOOKS:
        refused = ops_keys(keyed, "set-webhook", key_id, url)
        assert refused.returncode == 1 and "webhook" in refused.stderr, refused.stderr
    url = "http://127.0.0.1:9/hook"
    assert json.loads(ops_keys(keyed, "set-webhook", key_id, url).stdout)["webhook"] == url
    assert json.loads(ops_keys(keyed, "list", "--tenant", "tau").stdout)["webhook"] == url
    cleared = ops_keys(keyed, "set-webhook", key_id, "--clear")
    assert cleared.returncode == 0 and json.loads(cleared.stdout)["webhook"] is None
    assert ops_keys(keyed, "set-webhook", "0123456789abcdef", "--clear").returncode == 1
