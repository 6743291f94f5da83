"""Several conversations at once on one resident model, through the HTTP API.

The demo model's worker has 4 slots: 4 jobs submitted together generate together
(one decode step advances them all), each answering its own prompt; one of them
can be cancelled without disturbing the others; a long prompt is read in chunks
while the others keep streaming; a 5th job waits in line until a slot frees.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx

from tests.helpers import LONG, hi, slots, submit, wait_done, wait_idle

# Prompts the demo model answers at length, each in its own recognisable way (greedy).
# The end-of-turn token is banned: a job's answer depends a little on which jobs share its
# decode steps (floating point), and an early stop would free a slot the test counts on.
NO_END = {"logit_bias": {"2": -100}}  # SmolLM2's <|im_end|>
PROMPTS = {
    "numbers": LONG,
    "hello": "Repeat the word 'hello' 1000 times.",
    "apple": "Repeat the word 'apple' 1000 times.",
    "banana": "Repeat the word 'banana' 1000 times.",
}


def cpu_workers(client: httpx.Client) -> list[dict[str, Any]]:
    [cpu] = [q for q in client.get("/v1/queues").json()["data"] if q["queue"] == "cpu"]
    workers: list[dict[str, Any]] = cpu["workers"]
    return workers


def submit_together(client: httpx.Client, max_tokens: int) -> dict[str, dict[str, Any]]:
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        jobs = pool.map(lambda text: submit(client, hi(text, max_tokens=max_tokens,
                                                        temperature=0, **NO_END)),
                        PROMPTS.values())
        return dict(zip(PROMPTS, jobs, strict=True))


def belongs(name: str, output: str) -> bool:
    """The answer is the one its prompt asked for, and none of the others'."""
    text = output.lower()
    others = {"hello", "apple", "banana"} - {name}
    if name == "numbers":
        return text.startswith("1, 2, 3, 4, 5") and not any(w in text for w in others)
    return text.count(name) >= 3 and not any(w in text for w in others)


def test_four_jobs_generate_at_once_each_answering_its_own_prompt(
    client: httpx.Client,
) -> None:
    wait_idle(client)
    assert slots(client) == 4
    jobs = submit_together(client, max_tokens=150)
    most_busy = 0
    while not all(client.get(f"/v1/jobs/{j['id']}").json()["status"] == "succeeded"
                  for j in jobs.values()):
        [worker] = cpu_workers(client)
        most_busy = max(most_busy, worker["slots_busy"])
        time.sleep(0.1)
    assert most_busy == 4  # the heartbeat saw all four slots generating
    done = {name: wait_done(client, j["id"]) for name, j in jobs.items()}
    for name, job in done.items():
        assert belongs(name, job["output"]), (name, job["output"][:200])
        assert job["usage"]["completion_tokens"] == 150
    # they overlapped: each started before any of them finished
    starts = [datetime.fromisoformat(j["started_at"]) for j in done.values()]
    ends = [datetime.fromisoformat(j["finished_at"]) for j in done.values()]
    assert max(starts) < min(ends)
    assert len({j["queue"] for j in done.values()}) == 1


def test_cancelling_one_of_four_leaves_the_others_alone(client: httpx.Client) -> None:
    wait_idle(client)
    jobs = submit_together(client, max_tokens=200)
    victim = jobs["hello"]["id"]
    while len(client.get(f"/v1/jobs/{victim}").json()["output"]) < 20:
        time.sleep(0.02)
    before = client.get(f"/v1/jobs/{victim}").json()["output"]
    answer = client.post(f"/v1/jobs/{victim}/cancel")  # answers once the job has stopped
    final = wait_done(client, victim)
    assert answer.json()["status"] == final["status"] == "cancelled"
    assert final["finish_reason"] == "cancelled" and final["usage"]["completion_tokens"] < 200
    # it stopped within about one token: a few more words at most
    assert final["output"].startswith(before) and len(final["output"]) - len(before) <= 40
    for name in ("numbers", "apple", "banana"):
        job = wait_done(client, jobs[name]["id"])
        assert job["status"] == "succeeded", job
        assert job["usage"]["completion_tokens"] == 200
        assert belongs(name, job["output"])


def test_a_long_prompt_does_not_freeze_the_streams_of_others(client: httpx.Client) -> None:
    wait_idle(client)
    streaming = submit(client, hi(PROMPTS["hello"], max_tokens=400, temperature=0))
    gaps: list[float] = []
    stop = threading.Event()

    def watch() -> None:  # the output's growth, as a poller sees it
        last_len, last_at = 0, time.monotonic()
        while not stop.is_set():
            job = client.get(f"/v1/jobs/{streaming['id']}").json()
            now = time.monotonic()
            if len(job["output"]) > last_len:
                if last_len:
                    gaps.append(now - last_at)
                last_len, last_at = len(job["output"]), now
            if job["status"] != "running" and job["output"]:
                return
            time.sleep(0.02)

    while not client.get(f"/v1/jobs/{streaming['id']}").json()["output"]:
        time.sleep(0.02)
    watcher = threading.Thread(target=watch)
    watcher.start()
    essay = " ".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog."
                     for i in range(120))  # about 1,800 prompt tokens
    reader = submit(client, hi(f"{essay}\n\nSummarise this in one sentence.", max_tokens=8))
    try:
        read = wait_done(client, reader["id"])
    finally:  # the watcher shares the client: it stops before the client closes
        stop.set()
        watcher.join()
    wait_done(client, streaming["id"])
    assert read["status"] == "succeeded" and read["usage"]["prompt_tokens"] > 1500
    read_s = read["timings"]["ttft_ms"] / 1000  # how long its prompt took to read
    assert read_s > 2  # long enough for a freeze to show
    # while it was read, the other stream went on: no pause anywhere near that long
    assert gaps and max(gaps) < read_s / 2, (max(gaps), read_s)


def test_a_fifth_job_waits_at_the_head_of_the_line_until_a_slot_frees(
    client: httpx.Client,
) -> None:
    wait_idle(client)
    jobs = submit_together(client, max_tokens=300)
    while not all(client.get(f"/v1/jobs/{j['id']}").json()["status"] == "running"
                  for j in jobs.values()):
        time.sleep(0.05)
    fifth = submit(client, hi("Name five fruits.", max_tokens=16, temperature=0))
    assert fifth["status"] == "queued" and fifth["position"] == 0
    time.sleep(1)
    waiting = client.get(f"/v1/jobs/{fifth['id']}").json()
    assert waiting["status"] == "queued" and waiting["position"] == 0
    client.post(f"/v1/jobs/{jobs['numbers']['id']}/cancel")  # a slot frees
    done = wait_done(client, fifth["id"])
    assert done["status"] == "succeeded" and done["output"]
    others = [client.get(f"/v1/jobs/{jobs[n]['id']}").json()["status"]
              for n in ("hello", "apple", "banana")]
    assert "running" in others or all(s == "succeeded" for s in others)
    for name in ("hello", "apple", "banana"):
        client.post(f"/v1/jobs/{jobs[name]['id']}/cancel")
