"""The token-to-text step: UTF-8 split across tokens, stop strings held back and cut."""

from workers.text import TextAssembler


def feed_all(assembler: TextAssembler, chunks: list[bytes]) -> tuple[str, bool]:
    out = ""
    for chunk in chunks:
        piece, stopped = assembler.feed(chunk)
        out += piece
        if stopped:
            return out, True
    return out + assembler.flush(), False


def test_plain_text_passes_through() -> None:
    assert feed_all(TextAssembler([]), [b"Hello", b", ", b"world"]) == ("Hello, world", False)


def test_multibyte_character_split_across_tokens() -> None:
    euro = "€".encode()
    a = TextAssembler([])
    assert a.feed(euro[:1]) == ("", False)
    assert a.feed(euro[1:2]) == ("", False)
    assert a.feed(euro[2:] + b"5") == ("€5", False)


def test_stop_string_is_cut_and_not_emitted() -> None:
    assert feed_all(TextAssembler(["END"]), [b"one two ", b"E", b"N", b"D more"]) == (
        "one two ", True)


def test_stop_prefix_is_held_back_then_released() -> None:
    a = TextAssembler(["STOP"])
    assert a.feed(b"go ST") == ("go ", False)
    assert a.feed(b"AY") == ("STAY", False)


def test_held_text_is_flushed_at_the_end() -> None:
    assert feed_all(TextAssembler(["<|im_end|>"]), [b"bye <|im"]) == ("bye <|im", False)
