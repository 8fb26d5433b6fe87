"""The finish journal, on real files and a real SQLite store: what a dead worker journaled is
read back without the replies it had posted from memory, stored once however often it is
recovered, and kept (as `.recovered`) for a sweeper that reads it late."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from buidl_edge.store import finishes
from buidl_edge.store.base import Reply
from buidl_edge.store.finish_journal import FinishJournal
from buidl_edge.store.finishes import PendingFinishes
from buidl_edge.store.sqlite import SqliteStore
from support import ME, dead_pid, envelope, inbox_state, outbox_rows

REPLIES = [Reply("C1", "first"), Reply("C1", "second")]


def dead_owner() -> str:
    return f"{socket.gethostname()}:{dead_pid()}"


def test_a_dead_workers_journal_gives_back_its_finishes_without_the_replies_it_posted(tmp_path: Path) -> None:
    owner = dead_owner()
    dead = PendingFinishes(FinishJournal(tmp_path, owner))
    dead.begin("E1", REPLIES, None)
    dead.fell_back("E1", REPLIES, None)  # the store refused it: the replies go out from memory
    dead.reply_settled("E1:0")
    dead.begin("E2", [], "ValueError")
    dead.begin("E3", [Reply("C3", "done")], None)
    dead.landed("E3")  # the store has it: not needed any more

    found = FinishJournal(tmp_path, ME).read_dead().finishes
    assert set(found) == {"E1", "E2", "E3"}
    assert found["E1"].replies == {"E1:1": REPLIES[1]}
    assert found["E2"].error == "ValueError"


def test_recovering_a_journal_twice_stores_each_finish_and_reply_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "edge.sqlite3")
    owner = dead_owner()
    store.claim(envelope("E1", "Ev1"), owner)
    FinishJournal(tmp_path / "spill", owner).record("E1", REPLIES, None)

    mine = FinishJournal(tmp_path / "spill", ME)
    for _ in range(2):  # two sweepers, or one tried again
        dead = mine.read_dead()
        dead.recover(store)
    dead.mark_recovered()

    assert inbox_state(store, "E1") == "done"
    assert [(row.text, row.idempotency_key) for row in outbox_rows(store, "E1")] == [("first", "E1:0"),
                                                                                     ("second", "E1:1")]
    assert mine.read_dead().finishes == {}  # recovered: not stored again
    assert set(mine.finishes_of(owner)) == {"E1"}  # but still there for a late sweeper
    store.close()


def test_a_journal_with_nothing_pending_is_empty_and_one_rewritten_keeps_what_is_needed(tmp_path: Path) -> None:
    journal = FinishJournal(tmp_path, ME)
    pending = PendingFinishes(journal)
    pending.begin("E1", REPLIES, None)
    pending.landed("E1")
    assert journal.size == 0 and (tmp_path / f"{ME}.finishes").stat().st_size == 0

    pending.begin("E2", REPLIES, None)
    pending.fell_back("E2", REPLIES, None)
    pending.reply_settled("E2:1")
    journal.rewrite([("E2", REPLIES, None, {"E2:1"})])
    journal.close()
    text = (tmp_path / f"{ME}.finishes").read_text()
    assert text.count('"finish"') == 1 and '"settled":"E2:1"' in text


def test_lines_of_finishes_the_store_has_do_not_stay_while_another_finish_waits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One finish stuck (its reply waits to go out from memory) must not keep the lines of the
    finishes stored after it for hours: past the store's retention a recovery would queue their
    replies again. Scaled down: rewritten at once instead of after COMPACT_AFTER_S."""
    monkeypatch.setattr(finishes, "COMPACT_AFTER_S", 0.0, raising=False)
    journal = FinishJournal(tmp_path, ME)
    pending = PendingFinishes(journal)
    pending.begin("STUCK", REPLIES, None)
    pending.fell_back("STUCK", REPLIES, None)
    pending.begin("E2", REPLIES, None)
    pending.landed("E2")
    journal.close()
    text = (tmp_path / f"{ME}.finishes").read_text()
    assert '"finish":"STUCK"' in text and '"finish":"E2"' not in text, text
