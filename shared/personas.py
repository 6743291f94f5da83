"""Personas from the ancestor servers, as typed request blocks and as chat messages.

- ``office``: a business assistant; optional ``reference_data`` it may use only
  when the question calls for it.
- ``character``: role-play from a character sheet (``context``); the
  ``greeting`` is the first assistant turn of the conversation.

:func:`persona_turns` turns a persona into the leading messages of a prompt;
the worker then renders the whole list with the model's own chat template.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

OFFICE_PROMPT = (
    "You are a helpful, professional office assistant. Answer clearly and concisely, "
    "and say so when you do not know."
)
REFERENCE_PROMPT = (
    "Reference data follows. Use it only when it is relevant to the user's request; "
    "otherwise ignore it and do not mention it.\n<reference>\n{data}\n</reference>"
)
CHARACTER_PROMPT = (
    "You are {name}. Stay in character as {name} in every reply and never say that "
    "you are an AI.\n\nCharacter sheet:\n{context}"
)


class OfficePersona(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["office"] = "office"
    reference_data: str | None = Field(
        None, max_length=200_000, description="Data the assistant may use when relevant."
    )


class CharacterPersona(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["character"] = "character"
    character_name: str = Field(min_length=1, max_length=200)
    greeting: str = Field("", max_length=10_000, description="The first assistant turn.")
    context: str = Field("", max_length=200_000, description="The character sheet.")


Persona = Annotated[OfficePersona | CharacterPersona, Field(discriminator="type")]
_adapter: TypeAdapter[OfficePersona | CharacterPersona] = TypeAdapter(Persona)


def parse_persona(raw: dict[str, Any] | None) -> OfficePersona | CharacterPersona | None:
    """A persona as stored (plain JSON) back into its typed form."""
    return None if raw is None else _adapter.validate_python(raw)


def system_prompt(persona: OfficePersona | CharacterPersona) -> str:
    if isinstance(persona, CharacterPersona):
        return CHARACTER_PROMPT.format(name=persona.character_name,
                                       context=persona.context.strip() or "(none)")
    if persona.reference_data and persona.reference_data.strip():
        return OFFICE_PROMPT + "\n\n" + REFERENCE_PROMPT.format(data=persona.reference_data.strip())
    return OFFICE_PROMPT


def persona_turns(persona: OfficePersona | CharacterPersona | None,
                  extra_system: list[str]) -> list[dict[str, str]]:
    """The prompt's head: one system message (persona first, then the request's own
    system messages), then the character's greeting as the first assistant turn.

    One leading system message renders with every chat template (some accept no
    other position for it).
    """
    parts = ([system_prompt(persona)] if persona else []) + [s for s in extra_system if s]
    head = [{"role": "system", "content": "\n\n".join(parts)}] if parts else []
    if isinstance(persona, CharacterPersona) and persona.greeting.strip():
        head.append({"role": "assistant", "content": persona.greeting.strip()})
    return head
