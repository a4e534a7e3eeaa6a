"""Chunk planning: bounded rows and padded tokens, every row exactly once."""

from __future__ import annotations

from cbpt.server.engine.plan import length_sorted_chunks, plan_rows


def test_plan_rows_covers_candidates_examples_and_choices():
    examples = [(1, 2), (3,)]
    assert len(plan_rows(3, examples, None)) == 6
    rows = plan_rows(2, examples, [[(7,), (8, 9)], [(5,)]])
    assert len(rows) == 6
    assert rows[1].tokens == (1, 2, 8, 9) and rows[1].scored == 2 and rows[1].choice == 1


def test_chunks_respect_row_and_token_bounds_and_keep_every_row():
    rows = plan_rows(5, [tuple(range(n)) for n in (3, 40, 7, 12, 90, 1)], None)
    for row in rows:
        row.length = len(row.tokens) + 2
    for sort in (True, False):
        chunks = length_sorted_chunks(rows, max_rows=4, max_tokens=200, sort=sort)
        assert sorted(id(r) for c in chunks for r in c) == sorted(id(r) for r in rows)
        for chunk in chunks:
            assert len(chunk) <= 4
            assert len(chunk) == 1 or len(chunk) * max(r.length for r in chunk) <= 200
    ordered = [r.length for c in length_sorted_chunks(rows, 4, 200) for r in c]
    assert ordered == sorted(ordered)
