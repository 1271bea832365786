"""The ``conversations`` and ``messages`` tables: the admin playground's saved chats.

The API never reads or writes them (tests/test_playground.py proves it with PostgreSQL's own counters):
they belong to the admin panel, where every admin sees every conversation (one team).
"""
from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Any

_CONVERSATION_COLUMNS = "id, admin_id, assistant_id, title, created_at, updated_at"
_MESSAGE_COLUMNS = "id, conversation_id, role, content, meta, created_at"
#: Longest title kept (a first message names the conversation until it is renamed).
MAX_TITLE = 200


@dataclasses.dataclass(frozen=True)
class Conversation:
    id: uuid.UUID
    admin_id: int | None
    assistant_id: uuid.UUID | None
    title: str
    created_at: datetime
    updated_at: datetime


@dataclasses.dataclass(frozen=True)
class Message:
    id: int
    conversation_id: uuid.UUID
    role: str
    #: A string, or a list of content parts, as in the Chat Completions API.
    content: Any
    #: For an answer: ``prompt_tokens``, ``completion_tokens``, ``latency_ms``, ``cost_usd`` (text),
    #: ``model``, and ``stopped`` or ``error`` when it did not end normally.
    meta: dict[str, Any]
    created_at: datetime

    @property
    def text(self) -> str:
        """The content as text (the text parts of a list of parts)."""
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if isinstance(part, dict))
        return ""


def title_from(text: str) -> str:
    """A conversation's first title: the start of its first message, on one line."""
    line = " ".join(text.split())
    return line if len(line) <= 60 else line[:59] + "…"


async def create(db, *, admin_id: int | None, assistant_id: uuid.UUID | None, title: str = "") -> Conversation:
    """Start a conversation."""
    row = await db.fetchrow(
        f"INSERT INTO conversations (admin_id, assistant_id, title) VALUES ($1, $2, $3) "
        f"RETURNING {_CONVERSATION_COLUMNS}",
        admin_id,
        assistant_id,
        title[:MAX_TITLE],
    )
    return Conversation(**row)


async def get(db, conversation_id: uuid.UUID) -> Conversation | None:
    """The conversation with this id, or None."""
    row = await db.fetchrow(f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = $1", conversation_id)
    return None if row is None else Conversation(**row)


async def list_for_assistant(db, assistant_id: uuid.UUID, limit: int = 200) -> list[Conversation]:
    """An assistant's conversations, the most recently active first."""
    rows = await db.fetch(f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE assistant_id = $1 "
                          "ORDER BY updated_at DESC, created_at DESC LIMIT $2", assistant_id, limit)
    return [Conversation(**row) for row in rows]


async def rename(db, conversation_id: uuid.UUID, title: str) -> bool:
    """Give a conversation a title; False when it does not exist."""
    return await db.fetchval("UPDATE conversations SET title = $2 WHERE id = $1 RETURNING true",
                             conversation_id, title[:MAX_TITLE]) is True


async def delete(db, conversation_id: uuid.UUID) -> bool:
    """Delete a conversation and its messages; False when it did not exist."""
    return await db.fetchval("DELETE FROM conversations WHERE id = $1 RETURNING true", conversation_id) is True


async def add_message(db, conversation_id: uuid.UUID, role: str, content: Any,
                      meta: dict[str, Any] | None = None) -> Message:
    """Append a message to a conversation and mark the conversation updated (its first user message
    titles an untitled conversation)."""
    row = await db.fetchrow(
        f"""
        WITH touched AS (
            UPDATE conversations SET updated_at = now(),
                title = CASE WHEN title = '' AND $2 = 'user' THEN $5 ELSE title END
            WHERE id = $1)
        INSERT INTO messages (conversation_id, role, content, meta) VALUES ($1, $2, $3, $4)
        RETURNING {_MESSAGE_COLUMNS}
        """,
        conversation_id,
        role,
        content,
        meta or {},
        title_from(content) if isinstance(content, str) else "",
    )
    return Message(**row)


async def messages(db, conversation_id: uuid.UUID) -> list[Message]:
    """The messages of a conversation, oldest first."""
    rows = await db.fetch(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 ORDER BY id", conversation_id
    )
    return [Message(**row) for row in rows]
