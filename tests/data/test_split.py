import random

import pytest

from bittern.data.split import PIECE_BYTES, Splitter, cut_pieces, piece_position, split_pieces
from bittern.errors import BitternError


def test_cut_pieces_at_line_boundaries(corpus):
    for text in corpus:
        data = text.encode()
        pieces = cut_pieces(data)
        assert b"".join(pieces) == data
        assert all(len(p) <= PIECE_BYTES for p in pieces)
        assert all(p.endswith(b"\n") for p in pieces)
        if len(data) > PIECE_BYTES:
            assert len(pieces) >= 2
            # greedy: no piece could have taken the next piece's first line too
            for a, b in zip(pieces, pieces[1:], strict=False):
                assert len(a) + len(b.split(b"\n")[0]) + 1 > PIECE_BYTES


def test_cut_keeps_an_overlong_line_whole():
    data = b"short\n" + b"x" * 100 + b"\nend"
    assert cut_pieces(data, max_bytes=50) == [b"short\n", b"x" * 100 + b"\n", b"end"]
    assert cut_pieces(b"y" * 120, max_bytes=50) == [b"y" * 120]


def test_position_depends_on_bytes_and_seed_only():
    assert piece_position(b"abc", 0) == piece_position(b"abc", 0)
    assert piece_position(b"abc", 0) != piece_position(b"abc", 1)
    positions = [piece_position(str(i).encode(), 0) for i in range(2000)]
    assert all(0 <= p < 1 for p in positions)
    assert 0.07 < sum(p < 0.1 for p in positions) / 2000 < 0.13


def test_split_is_the_hash_rule_and_streams():
    rng = random.Random(0)
    pieces = [bytes(rng.getrandbits(8) for _ in range(20)) for _ in range(300)]
    routed = list(split_pieces(pieces, 0.1, seed=0))
    assert sorted(r.piece for r in routed) == sorted(pieces)
    for r in routed:
        assert r.split == ("val" if piece_position(r.piece, 0) < 0.1 else "train")
    # nothing but the held-back piece of each split waits for the end
    splitter = Splitter(0.1, seed=0)
    out = [r for p in pieces for r in splitter.route(p)]
    assert len(out) == len(pieces) - 2
    assert len(splitter.finish()) == 2
    assert {r.piece for r in routed if r.split == "val"} != {
        r.piece for r in split_pieces(pieces, 0.1, seed=1) if r.split == "val"
    }


def test_each_split_keeps_a_piece():
    pieces = [b"a\n", b"b\n"]
    for fraction in (1e-9, 1 - 1e-9):
        routed = list(split_pieces(pieces, fraction, seed=0))
        assert sorted(r.split for r in routed) == ["train", "val"]
    many = [f"{i}\n".encode() for i in range(50)]
    routed = list(split_pieces(many, 1e-9, seed=0))
    (val,) = [r for r in routed if r.split == "val"]
    assert val.position == min(r.position for r in routed)  # the piece nearest validation moved


def test_split_refuses_bad_input():
    with pytest.raises(BitternError, match="too small"):
        list(split_pieces([b"only one\n"], 0.1, seed=0))
    with pytest.raises(BitternError, match="val_fraction"):
        Splitter(1.0, seed=0)
