"""``make bench``'s multi-turn scenario: chat clients that resend the whole history.

Each conversation is ``--turns`` turns (default 10) with an office assistant whose
system prompt carries its reference data (a staff directory, rooms, rules: about 700
tokens, generated here, nothing downloaded); each answer is greedy and at most
``--answer-tokens`` (48) tokens; each turn the client sends the system prompt and every
earlier question and answer again, as OpenAI-style clients (the SDK, LangChain, Open
WebUI) do, as one streamed ``/v1/chat/completions`` request, and times its first
token. It runs 1 conversation, then several interleaved (``--conversations``, default
1 and 8: 8 clients at once, each its own conversation, more than the 4 slots), on
chatq and on llama-server alike, alternating which goes first.

What must hold, and why:

- **Nothing carries over from an earlier run**: each run (a number of conversations,
  a pass) gets a system prompt of its own edition (its first line and its data
  differ), so neither side's prompt cache holds anything of it before its turn 1
  and turn 1 is a cold read. Within a run the conversations share the system
  prompt (a persona shared by many conversations) and differ from their first
  question on (who is asking, the order of the questions).
- **Deterministic**: the same arguments give the same prompts and questions.
- **The figures** (:func:`figures`): turn 1's and the last turn's first-token time
  (p50 over the conversations), the later half of the turns' p50 (turns 6-10 of
  10: whether a long history is read again each turn), and the whole run's wall
  clock, first request to last answer.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ops.bench_client import Messages, Stream, client, stream_chat
from ops.bench_stats import late_turns, percentile

COMPANIES = ["Northwind Logistics", "Bluefield Insurance", "Harbor Lane Architects",
             "Quarry Hill Software", "Saltmarsh Foods", "Elmstead Legal", "Brightwater Energy",
             "Copperleaf Publishing", "Redstone Engineering", "Meadowbrook Health"]
FIRST = ["Alice", "Bruno", "Chen", "Dana", "Emeka", "Fatima", "Goran", "Hana", "Ivan",
         "Julia", "Kofi", "Lena", "Marco", "Nadia", "Oscar", "Priya"]
LAST = ["Adams", "Becker", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Hoffmann",
        "Ito", "Jensen", "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov"]
ROLES = ["office manager", "finance manager", "IT support lead", "travel coordinator",
         "HR partner", "facilities officer", "legal counsel", "sales director",
         "payroll specialist", "receptionist", "security officer", "procurement lead",
         "marketing lead", "project manager", "data protection officer", "team assistant"]
ROOMS = [("Oak", 1, 4, "a whiteboard"), ("Birch", 1, 8, "a video screen"),
         ("Cedar", 2, 12, "a projector and a video screen"), ("Maple", 2, 6, "a whiteboard"),
         ("Pine", 3, 20, "a projector and microphones"), ("Willow", 3, 2, "a phone only"),
         ("Ash", 4, 10, "a video screen and a whiteboard"), ("Elm", 4, 16, "a projector")]
RULES = [
    "The office opens at 7:30 and closes at 19:00 from Monday to Thursday, and at 17:00 "
    "on Friday.",
    "Meeting rooms are booked in the calendar; a booking not used within 15 minutes is "
    "released.",
    "Expense claims up to 500 euros are approved by the line manager, above 500 euros by "
    "the finance manager.",
    "Parking spaces are booked one day ahead at the reception desk.",
    "Staff may work from home up to two days a week after agreeing the days with their "
    "manager.",
    "The first-aid kit is at the reception desk and in the kitchen on every floor.",
    "Printers are on every floor next to the kitchen; report a broken printer to IT support.",
    "Travel is booked through the travel coordinator at least five working days ahead.",
]
QUESTIONS = [
    "Who handles travel bookings, and what is their extension?",
    "Which meeting room can seat twelve people?",
    "Who approves an expense claim of 800 euros?",
    "When does the office close on Friday?",
    "How do I book a parking space?",
    "Which rooms have a video screen?",
    "What is the rule for working from home?",
    "Where can I find a first-aid kit?",
    "Who should I call about a broken printer?",
    "What is the extension of the HR partner?",
    "Which room is on the third floor and seats the most people?",
    "Summarise in one sentence what you told me so far.",
]


def system_prompt(edition: int) -> str:
    """The office assistant's instructions and reference data (about 700 tokens with
    SmolLM2's tokenizer); ``edition`` changes its first line and data throughout."""
    company = COMPANIES[edition % len(COMPANIES)]
    lines = [f"{company}, edition {edition}: office assistant.",
             f"You are the office assistant of {company}. Answer staff questions briefly "
             "and politely, in one or two sentences, using only the reference data below. "
             "If the data does not say, say so and name who to ask.", "", "Staff directory:"]
    for i in range(len(ROLES)):
        k = (i + edition) % len(FIRST)
        lines.append(f"- {FIRST[k]} {LAST[(k * 5 + edition) % len(LAST)]}, {ROLES[i]}, "
                     f"extension {2100 + 37 * i + edition}, room {(i % 4) + 1}{10 + i:02d}")
    lines += ["", "Meeting rooms:"]
    lines += [f"- {name}: floor {floor}, {seats} seats, {kit}"
              for name, floor, seats, kit in ROOMS]
    lines += ["", "Rules:"]
    lines += [f"- {rule}" for rule in RULES]
    return "\n".join(lines)


def questions(conversation: int, turns: int) -> list[str]:
    """``turns`` questions for one conversation: who is asking, then the questions in an
    order of its own."""
    asked = [QUESTIONS[(conversation * 5 + i) % len(QUESTIONS)] for i in range(turns)]
    k = conversation % len(FIRST)
    asked[0] = f"Hello, I am {FIRST[k]} and new here. {asked[0]}"
    return asked


def converse(base_url: str, system: str, asked: list[str], max_tokens: int,
             start: threading.Barrier | None = None) -> list[Stream]:
    """One conversation: each turn resends the system prompt and the whole history."""
    messages: Messages = [{"role": "system", "content": system}]
    streams: list[Stream] = []
    with client(base_url) as http:
        if start is not None:
            start.wait()
        for question in asked:
            messages.append({"role": "user", "content": question})
            stream = stream_chat(http, messages, max_tokens)
            messages.append({"role": "assistant", "content": stream.text})
            streams.append(stream)
    return streams


@dataclass
class Run:
    """One run of ``len(conversations)`` conversations at once on one side."""

    conversations: list[list[Stream]]
    wall_s: float


def run(base_url: str, count: int, turns: int, edition: int, max_tokens: int) -> Run:
    """``count`` conversations at once, each on a client thread of its own, started
    together; the wall clock runs from the start to the last answer."""
    system = system_prompt(edition)
    results: list[list[Stream]] = [[] for _ in range(count)]
    start = threading.Barrier(count + 1)

    def one(c: int) -> None:
        results[c] = converse(base_url, system, questions(c, turns), max_tokens, start)

    threads = [threading.Thread(target=one, args=(c,)) for c in range(count)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    if any(len(r) != turns for r in results):
        raise RuntimeError("a conversation failed; see the side's log")
    return Run(results, time.perf_counter() - began)


@dataclass(frozen=True)
class Figures:
    turn1_ms: float
    last_ms: float
    late_p50_ms: float
    wall_s: float
    answer_tokens: float  # median
    prompt_tokens: tuple[int, int]  # the longest prompt of turn 1 and of the last turn


def figures(ttfts: list[list[float]], wall_s: list[float], answer_tokens: list[int],
            prompt_tokens: tuple[int, int] = (0, 0)) -> Figures:
    """From each conversation's first-token times per turn (``ttfts[c][t - 1]``, ms) and
    each pass's wall clock: turn 1 p50, last turn p50, later half p50, median wall."""
    late = late_turns(len(ttfts[0]))
    return Figures(percentile([c[0] for c in ttfts], 50), percentile([c[-1] for c in ttfts], 50),
                   percentile([c[t - 1] for c in ttfts for t in late], 50),
                   percentile(wall_s, 50), percentile(answer_tokens, 50), prompt_tokens)


def of_runs(runs: list[Run]) -> Figures:
    conversations = [c for r in runs for c in r.conversations]
    return figures([[s.ttft_ms for s in c] for c in conversations], [r.wall_s for r in runs],
                   [s.tokens for c in conversations for s in c],
                   (max(c[0].prompt_tokens for c in conversations),
                    max(c[-1].prompt_tokens for c in conversations)))
