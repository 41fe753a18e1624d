"""`stop` strings end generation, are not included in the text, and are never half-streamed."""

from __future__ import annotations

from tests.conftest import LiveServer


def test_stop_string_ends_generation(fake_server: LiveServer) -> None:
    """The fake engine counts up from the last byte: 'a' → 'bcdef…'; stop 'e' ends before it."""
    resp = fake_server.client().completions.create(model="tiny-gpt", prompt="a", max_tokens=20, stop="e")
    assert resp.choices[0].text == "bcd"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens == 4  # 'e' was generated


def test_stop_spanning_tokens_is_not_streamed(fake_server: LiveServer) -> None:
    """A stop string split over two tokens never reaches the client, even in part."""
    stream = fake_server.client().completions.create(
        model="tiny-gpt", prompt="a", max_tokens=20, stop=["xyz", "ef"], stream=True
    )
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text == "bcd"


def test_no_stop_runs_to_max_tokens(fake_server: LiveServer) -> None:
    """Without a stop string the request ends at max_tokens with finish_reason length."""
    resp = fake_server.client().completions.create(model="tiny-gpt", prompt="a", max_tokens=5)
    assert resp.choices[0].text == "bcdef" and resp.choices[0].finish_reason == "length"
