"""Every model of the pydantic corpus (tests/pydantic_corpus.py) either becomes a
grammar llama.cpp accepts, admitting the instances pydantic accepts (dumped as JSON),
or is refused up front naming one keyword, where it is."""

from __future__ import annotations

from typing import Any

import pytest
from llama_cpp import Llama

from shared.json_grammar import UnsupportedSchema, response_format_grammar
from shared.schemas import ResponseFormat
from shared.tools import toolset_of
from tests.grammar_check import accepts, parses, vocab_only
from tests.pydantic_corpus import CORPUS, Case

WHERE = "response_format.json_schema.schema"
ENFORCED = [c for c in CORPUS if c.refused is None]
REFUSED = [c for c in CORPUS if c.refused is not None]


@pytest.fixture(scope="module")
def vocab_llm() -> Llama:
    return vocab_only()


def schema_format(case: Case) -> ResponseFormat:
    return ResponseFormat.model_validate({"type": "json_schema", "json_schema": {
        "name": case.name, "schema": case.model.model_json_schema()}})


def test_the_corpus_is_large_and_has_both_outcomes() -> None:
    assert len(CORPUS) >= 40
    assert len(ENFORCED) >= 30 and len(REFUSED) >= 5
    assert all(c.instances for c in ENFORCED)


@pytest.mark.parametrize("case", ENFORCED, ids=[c.name for c in ENFORCED])
def test_enforced_models_admit_what_pydantic_accepts(case: Case, vocab_llm: Llama) -> None:
    gbnf = response_format_grammar(schema_format(case), WHERE)
    assert gbnf is not None and parses(vocab_llm, gbnf)
    for instance in case.instances:
        text = instance.model_dump_json(by_alias=True)
        case.model.model_validate_json(text)  # what the grammar admits, pydantic takes
        assert accepts(vocab_llm, gbnf, text), text


@pytest.mark.parametrize("case", REFUSED, ids=[c.name for c in REFUSED])
def test_refused_models_name_the_keyword(case: Case) -> None:
    with pytest.raises(UnsupportedSchema) as refused:
        response_format_grammar(schema_format(case), WHERE)
    where = refused.value.path
    assert where.startswith(WHERE)
    assert where.rsplit(".", 1)[-1] == case.refused or f"`{case.refused}`" in \
        refused.value.message, (where, refused.value.message)


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_tools_mode_decides_the_same(case: Case) -> None:
    tool: dict[str, Any] = {"type": "function", "function": {
        "name": case.name, "parameters": case.model.model_json_schema()}}
    if case.refused is None:
        toolset = toolset_of([tool], "required")
        assert toolset is not None and toolset.grammar()
        return
    with pytest.raises(Exception) as refused:
        toolset_of([tool], "required")
    assert case.refused in str(getattr(refused.value, "details", refused.value))
