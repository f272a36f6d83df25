"""Audit actions have one home (``AuditAction``), each with English and Chinese text, and the log refuses others."""

from __future__ import annotations

import ast
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import carvault
from carvault.access.accounts import Accounts
from carvault.access.audit import AuditAction, AuditLog, event_json
from carvault.store.metadata import Database

MESSAGES = Path(carvault.__file__).parent / "web" / "messages"
CJK = re.compile(r"[\u4e00-\u9fff]")


def _messages(name: str) -> dict[str, str]:
    return json.loads((MESSAGES / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("action", list(AuditAction), ids=str)
def test_every_action_has_english_and_chinese_text(action: AuditAction) -> None:
    en, zh = _messages("en.json").get(f"action.{action}"), _messages("zh-CN.json").get(f"action.{action}")
    assert en and en.isascii(), f"no English text for {action}"
    assert zh and CJK.search(zh), f"no Chinese text for {action}"


def test_no_message_names_an_action_the_log_cannot_record() -> None:
    for name in ("en.json", "zh-CN.json"):
        stray = {k for k in _messages(name) if k.startswith("action.")} - {f"action.{a}" for a in AuditAction}
        assert not stray, f"{name} has text for actions not in AuditAction: {stray}"


def _audit_action_literals() -> list[tuple[str, int, str]]:
    """Every string literal given as the action of an audit call (``by_owner(id, ACTION)``, ``record(action=)``)."""
    found = []
    for path in Path(carvault.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            args = [k.value for k in node.keywords if k.arg == "action"]
            if node.func.attr == "by_owner" and len(node.args) >= 2:
                args.append(node.args[1])
            elif node.func.attr not in ("by_owner", "record"):
                continue
            for arg in args:
                for leaf in ast.walk(arg):  # a conditional action names both branches
                    if isinstance(leaf, ast.Constant) and isinstance(leaf.value, str):
                        found.append((path.name, node.lineno, leaf.value))
    return found


def test_every_audit_call_names_an_action_of_the_enum() -> None:
    literals = _audit_action_literals()
    assert len(literals) >= 10, "the scan found too few audit calls; has the call shape changed?"
    stray = [f"{f}:{line} {a!r}" for f, line, a in literals if a not in set(AuditAction)]
    assert not stray, f"audit calls with actions not in AuditAction: {stray}"


def test_the_log_refuses_an_unknown_action_and_stores_known_ones(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    db.create_schema()
    owner = Accounts(db, session_ttl_s=60).register("audit@example.com", "correct horse battery").id
    log = AuditLog(db)
    with pytest.raises(ValueError, match="unknown audit action 'telemetry.peek'"):
        log.by_owner(owner, "telemetry.peek")
    log.by_owner(owner, AuditAction.TELEMETRY_READ)
    log.by_owner(owner, "consent.stop")
    events = [event_json(e) for e in log.list(owner)]
    assert [e["action"] for e in events] == ["consent.stop", "telemetry.read"]
    assert all(type(e["action"]) is str for e in events)  # stored and hashed as plain text
    assert log.verify_chain(owner) == 2


def test_concurrent_records_from_two_processes_keep_every_chain_whole(tmp_path: Path) -> None:
    """Group commit and the write gate: many threads of two 'processes' (own engines) append at once."""
    url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    first = Database(url)
    first.create_schema()
    accounts = Accounts(first, session_ttl_s=60)
    owners = [accounts.register(f"busy-{i}@example.com", "correct horse battery").id for i in range(3)]
    logs = [AuditLog(first), AuditLog(Database(url))]

    def append(n: int) -> list[int]:
        log = logs[n % 2]
        return [log.by_owner(owners[(n + i) % 3], AuditAction.TELEMETRY_READ).id for i in range(15)]

    with ThreadPoolExecutor(max_workers=12) as pool:
        ids = [i for batch in pool.map(append, range(12)) for i in batch]
    assert len(set(ids)) == len(ids) == 12 * 15
    assert sum(logs[0].verify_chain(o) for o in owners) == 12 * 15
