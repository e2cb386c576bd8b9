from bittern.data.split import PIECE_BYTES, choose_validation, cut_pieces


def test_cut_pieces_at_line_boundaries(corpus):
    for text in corpus:
        pieces = cut_pieces(text)
        assert "".join(pieces) == text
        assert all(len(p.encode()) <= PIECE_BYTES for p in pieces)
        assert all(p.endswith("\n") for p in pieces)
        if len(text.encode()) > PIECE_BYTES:
            assert len(pieces) >= 2


def test_cut_keeps_an_overlong_line_whole():
    text = "short\n" + "x" * 100 + "\nend"
    assert cut_pieces(text, max_bytes=50) == ["short\n", "x" * 100 + "\n", "end"]


def test_choose_validation_hits_fraction_and_keeps_both_splits():
    sizes = [1000] * 100
    val = choose_validation(sizes, 0.1, seed=0)
    assert len(val) == 10
    assert val == choose_validation(sizes, 0.1, seed=0)
    assert val != choose_validation(sizes, 0.1, seed=1)
    assert len(choose_validation([5, 5], 0.01, seed=0)) == 1
    assert len(choose_validation([5, 5], 0.99, seed=0)) == 1
