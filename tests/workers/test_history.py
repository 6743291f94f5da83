"""Prompt building with a conversation: personas and token-exact trimming, with the
demo model's real tokenizer and chat template (a vocabulary-only load)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from shared.personas import CharacterPersona, OfficePersona, persona_turns
from shared.prompting import PromptRenderer
from shared.registry import Registry
from shared.settings import DEFAULT_REGISTRY
from workers.history import compatible_head, fit_history


@pytest.fixture(scope="module")
def renderer() -> Iterator[PromptRenderer]:
    registry = Registry.load(DEFAULT_REGISTRY)
    path = registry.gguf_path(registry.models[registry.default_name])
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    yield PromptRenderer(llm)
    llm.close()


def text(renderer: PromptRenderer, messages: list[dict[str, str]]) -> str:
    tokens = renderer.render(messages).tokens
    return renderer.llm.detokenize(tokens, special=True).decode()


def history(turns: int, words: int = 40) -> list[dict[str, str]]:
    out = []
    for i in range(turns):
        out.append({"role": "user", "content": f"question {i}: " + "lorem " * words})
        out.append({"role": "assistant", "content": f"answer {i}: " + "ipsum " * words})
    return out


def test_character_greeting_is_the_first_assistant_turn(renderer: PromptRenderer) -> None:
    persona = CharacterPersona(character_name="Captain Nemo", greeting="Welcome aboard.",
                               context="A reclusive submarine captain.")
    head = persona_turns(persona, [])
    assert [m["role"] for m in head] == ["system", "assistant"]
    rendered = text(renderer, [*head, {"role": "user", "content": "Who are you?"}])
    assert rendered.index("Captain Nemo") < rendered.index("Welcome aboard.")
    assert rendered.index("Welcome aboard.") < rendered.index("Who are you?")
    assert "A reclusive submarine captain." in rendered


def test_office_reference_data_is_offered_only_when_relevant(renderer: PromptRenderer) -> None:
    head = persona_turns(OfficePersona(reference_data="Q3 revenue: 4.2M EUR"),
                         ["Answer in French."])
    assert len(head) == 1 and head[0]["role"] == "system"
    system = head[0]["content"]
    assert "Q3 revenue: 4.2M EUR" in system and "only when it is relevant" in system
    assert system.endswith("Answer in French.")
    assert "reference" not in persona_turns(OfficePersona(), [])[0]["content"].lower()


def test_no_persona_no_head() -> None:
    assert persona_turns(None, []) == []


def test_history_that_fits_is_kept_whole(renderer: PromptRenderer) -> None:
    past = history(2)
    dropped, prompt = fit_history(renderer, [], past, [{"role": "user", "content": "hi"}], 2000)
    assert dropped == 0
    assert prompt.tokens == renderer.render([*past, {"role": "user", "content": "hi"}]).tokens


def test_trimming_drops_the_fewest_oldest_messages(renderer: PromptRenderer) -> None:
    head = persona_turns(CharacterPersona(character_name="Ada", greeting="Hello there."), [])
    past = history(10)
    tail = [{"role": "user", "content": "And now?"}]
    budget = 400
    assert renderer.count([*head, *past, *tail]) > budget
    dropped, prompt = fit_history(renderer, head, past, tail, budget)
    assert 0 < dropped < len(past)
    assert len(prompt.tokens) <= budget
    assert past[dropped]["role"] == "user"  # the kept history starts on a user turn
    # One user turn fewer dropped would not fit: the trim is minimal.
    assert renderer.count([*head, *past[dropped - 2:], *tail]) > budget
    rendered = renderer.llm.detokenize(prompt.tokens, special=True).decode()
    assert "Ada" in rendered and "Hello there." in rendered and "And now?" in rendered
    assert "question 9" in rendered and "question 0" not in rendered


def test_everything_is_dropped_when_nothing_fits(renderer: PromptRenderer) -> None:
    dropped, _ = fit_history(renderer, [], history(3), [{"role": "user", "content": "x"}], 5)
    assert dropped == 6


def test_a_template_that_wants_user_first_gets_the_greeting_in_the_system_message(
        renderer: PromptRenderer) -> None:
    strict = PromptRenderer(renderer.llm)
    # Like Gemma's: a leading system message, then strictly user/assistant/user...
    strict.formatter = Jinja2ChatFormatter(
        template="{% set rest = messages[1:] if messages[0]['role'] == 'system' else messages %}"
                 "{% for m in rest %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                 "{{ raise_exception('roles must alternate') }}{% endif %}"
                 "<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>",
        eos_token="", bos_token="")
    head = persona_turns(CharacterPersona(character_name="Ada", greeting="Hello there."), [])
    assert compatible_head(renderer, head) == head
    folded = compatible_head(strict, head)
    assert [m["role"] for m in folded] == ["system"]
    assert "Hello there." in folded[0]["content"]
    strict.render([*folded, {"role": "user", "content": "Hi"}])  # renders now


def test_tools_reach_the_demo_template_in_the_generic_format(renderer: PromptRenderer) -> None:
    from shared.tools import toolset_of

    toolset = toolset_of([{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}}}}}], "auto")
    bound = renderer.for_tools(toolset)
    assert not renderer.supports_tools and renderer.toolset is None  # the original unchanged
    turn = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "21 C"}]
    rendered = text(bound, turn)
    assert rendered.startswith("<|im_start|>system\nYou can call these functions:")
    assert '<|im_start|>assistant\n{"name": "get_weather", "arguments": {"city": "Paris"}}' \
        in rendered
    assert "<|im_start|>user\nResult of get_weather (call call_1):\n21 C" in rendered
    # Trimming the history keeps the functions (they are part of every render).
    dropped, prompt = fit_history(bound, [], history(10), turn, 500)
    assert dropped > 0
    assert "You can call these functions" in renderer.llm.detokenize(prompt.tokens).decode()


class _Store:
    """Stored turns for any conversation id; records which ids were read."""

    def __init__(self) -> None:
        self.loads: list[str] = []

    def load(self, conversation_id: str, tenant: str, exclude_job: str,
             limit: int) -> tuple[None, list[dict[str, str]]]:
        self.loads.append(conversation_id)
        return None, history(1, words=2)


def test_a_conversation_the_api_made_for_the_job_is_not_read(renderer: PromptRenderer) -> None:
    from shared.lifecycle import JobRecord
    from shared.schemas import JobStatus, SamplingParams
    from workers.history import plan_prompt

    def record(conversation_id: str, fresh: bool) -> JobRecord:
        return JobRecord(id="job_1", status=JobStatus.running, model="m", queue="cpu",
                         tenant="t", params=SamplingParams(max_tokens=8, temperature=0, top_p=1),
                         created_at=1.0,
                         messages=[{"role": "user", "content": "Hi"}],
                         conversation_id=conversation_id, fresh_conversation=fresh)

    store = _Store()
    fresh = plan_prompt(store, renderer, 2048, record("conv_new", True), {})  # type: ignore[arg-type]
    assert store.loads == [] and fresh.history_used == 0
    assert fresh.messages == [{"role": "user", "content": "Hi"}]
    given = plan_prompt(store, renderer, 2048, record("conv_old", False), {})  # type: ignore[arg-type]
    assert store.loads == ["conv_old"] and given.history_used == 2


def test_trimming_in_steps_keeps_the_prompts_beginning_for_many_turns(
        renderer: PromptRenderer) -> None:
    """A conversation that outgrows the context, turn after turn (about 120 tokens
    each): with steps (a third of the room here) its history starts at the same
    message for several turns in a row, so the prompt cache keeps matching; dropping
    the fewest messages moves the start at almost every turn."""
    budget, step, turns = 1500, 500, 30

    def starts(trim_step: int | None) -> list[int]:
        past: list[dict[str, str]] = []
        found = []
        for i in range(turns):
            tail = [{"role": "user", "content": f"question {i}: " + "lorem " * 20}]
            dropped, prompt = fit_history(renderer, [], past, tail, budget, step=trim_step)
            assert len(prompt.tokens) <= budget
            assert dropped == 0 or past[dropped]["role"] == "user"
            found.append(dropped)
            past += [*tail, {"role": "assistant", "content": f"answer {i}: " + "ipsum " * 20}]
        return found

    def moves(found: list[int]) -> int:
        return sum(1 for a, b in itertools.pairwise(found) if a != b)

    stepped, fewest = starts(step), starts(None)
    assert stepped == sorted(stepped) and stepped[-1] > 0
    assert moves(fewest) >= 3 * moves(stepped) > 0
