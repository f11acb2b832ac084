"""The shared chat-message helpers (``charter.messages``) on known inputs."""

from charter.messages import drop_oldest_turn, usable_answer, with_system

SYS = {"role": "system", "content": "Be kind."}


def turns(*roles):
    return [{"role": r, "content": f"{r}{i}"} for i, r in enumerate(roles)]


def test_usable_answer_drops_or_trims_what_was_cut_off():
    assert usable_answer("Done.", True, "drop") == ("Done.", "ok")
    assert usable_answer("No end mark", True, "drop") == ("No end mark", "ok")  # finished: kept as written
    assert usable_answer("One. Two and thr", False, "drop") == (None, "truncated")
    assert usable_answer("One. Two and thr", False, "trim") == ("One.", "trimmed")
    assert usable_answer("no sentence end", False, "trim") == (None, "truncated")
    assert usable_answer("  \n", True, "trim") == (None, "empty")


def test_drop_oldest_turn_keeps_the_system_prompt_and_starts_on_a_user_turn():
    chat = [SYS, *turns("user", "assistant", "user", "assistant", "user")]
    shorter = drop_oldest_turn(chat)
    assert shorter == [SYS, *chat[3:]]
    assert drop_oldest_turn(shorter) == [SYS, chat[-1]]
    assert drop_oldest_turn([SYS, chat[-1]]) is None
    # A B-side view (user, assistant, assistant...) still starts on a user turn after dropping.
    assert drop_oldest_turn(turns("user", "assistant", "assistant", "user", "assistant"))[0]["role"] == "user"


def test_with_system_joins_an_existing_system_message():
    chat = turns("user")
    assert with_system(chat, None) == chat and with_system(chat, None) is not chat
    assert with_system(chat, "Hi.")[0] == {"role": "system", "content": "Hi."}
    assert with_system([SYS, *chat], "Hi.")[0]["content"] == "Hi.\n\nBe kind."
