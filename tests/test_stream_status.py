"""`status` shows the streams' figures from each worker's heartbeat, and its table gains their
columns once some worker has streamed an answer (a worker that never did keeps the table short)."""
from __future__ import annotations

from buidl_edge.ops.status import TABLE_COLUMNS, table_columns, worker_row

STREAMED = {"streams": {"open": 2, "started": 7, "appends_sent": 40, "appends_coalesced": 260, "rate_limited": 1,
                        "rollovers": 3}}


def test_status_rows_carry_the_stream_figures_and_the_table_shows_them_once_any_worker_streamed() -> None:
    row = worker_row("worker_00", "RUNNING", 123, 10.0, STREAMED)
    assert (row["streams_open"], row["streams_started"], row["stream_appends"], row["stream_coalesced"],
            row["stream_429s"], row["stream_rollovers"]) == (2, 7, 40, 260, 1, 3)
    quiet = worker_row("worker_01", "RUNNING", 124, 10.0, {"streams": {"open": 0, "started": 0}})
    assert table_columns([quiet]).keys() == TABLE_COLUMNS.keys()
    shown = table_columns([quiet, row])
    assert [shown[h](row) for h in ("streams_open", "streamed", "appends", "coalesced", "stream_429s",
                                    "rollovers")] == [2, 7, 40, 260, 1, 3]
