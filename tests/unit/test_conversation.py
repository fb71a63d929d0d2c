"""What the model sees of a conversation: system prompt, history in order, then the new question."""

from __future__ import annotations

from fleet.state import Exchange
from workers.llm_bridge.conversation import INTERRUPTED_MARK, build_messages

SYSTEM = "You are a friendly voice assistant."


def test_a_first_turn_is_system_then_user() -> None:
    assert build_messages(SYSTEM, [], "Hi there") == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hi there"},
    ]


def test_history_comes_in_order_between_system_and_the_new_question() -> None:
    history = [
        Exchange("What is two plus two?", "Four."),
        Exchange("And times three?", "Twelve."),
    ]
    assert build_messages(SYSTEM, history, "Thanks!") == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And times three?"},
        {"role": "assistant", "content": "Twelve."},
        {"role": "user", "content": "Thanks!"},
    ]


def test_an_interrupted_reply_is_marked_for_the_model() -> None:
    history = [Exchange("Tell me a long story.", "Once upon a time there…", interrupted=True)]
    messages = build_messages(SYSTEM, history, "Stop, tell me the time.")
    assert messages[2] == {
        "role": "assistant",
        "content": "Once upon a time there…" + INTERRUPTED_MARK,
    }
    assert "interrupted" in messages[2]["content"]
    assert messages[-1] == {"role": "user", "content": "Stop, tell me the time."}


def test_a_reply_interrupted_before_any_word_still_tells_the_model() -> None:
    history = [Exchange("Tell me a story.", "", interrupted=True)]
    messages = build_messages(SYSTEM, history, "Never mind.")
    assert messages[2]["role"] == "assistant"
    assert messages[2]["content"] == INTERRUPTED_MARK.strip()


def test_a_turn_that_got_no_reply_is_left_out_so_roles_alternate() -> None:
    messages = build_messages(SYSTEM, [Exchange("Hello?", "  ")], "Are you there?")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[-1]["content"] == "Are you there?"


def test_the_new_question_is_always_last_and_history_is_not_changed() -> None:
    history = [Exchange(f"q{i}", f"a{i}") for i in range(10)]
    messages = build_messages(SYSTEM, history, "final question")
    assert messages[0]["role"] == "system"
    assert messages[-1] == {"role": "user", "content": "final question"}
    assert len(messages) == 1 + 2 * 10 + 1
    assert history == [Exchange(f"q{i}", f"a{i}") for i in range(10)]
