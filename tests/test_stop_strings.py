"""Stop strings never leak into streamed text, even when split across tokens."""

from __future__ import annotations

from warmload.stopping import StopStrings


def run(stops, pieces):
    matcher = StopStrings(stops)
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_stop_split_across_pieces_is_cut_and_not_emitted():
    assert run(["</s>"], ["Hello </", "s> world"]) == ("Hello ", True)


def test_held_back_prefix_is_released_when_it_does_not_complete():
    matcher = StopStrings(["STOP"])
    assert matcher.feed("abc ST") == ("abc ", False)
    assert matcher.feed("ART") == ("START", False)


def test_earliest_of_several_stops_wins():
    assert run(["xyz", "b"], ["aaa b xyz"]) == ("aaa ", True)


def test_no_stops_passes_everything_through():
    assert run([], ["a", "b"]) == ("ab", False)


def test_flush_releases_tail():
    assert run(["END"], ["the E"]) == ("the E", False)
