"""The ``conversations`` and ``messages`` tables: the admin playground's saved chats."""
from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Any

_CONVERSATION_COLUMNS = "id, admin_id, assistant_id, title, created_at, updated_at"
_MESSAGE_COLUMNS = "id, conversation_id, role, content, created_at"


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
    created_at: datetime


async def create(db, *, admin_id: int | None, assistant_id: uuid.UUID | None, title: str = "") -> Conversation:
    """Start a conversation."""
    row = await db.fetchrow(
        f"INSERT INTO conversations (admin_id, assistant_id, title) VALUES ($1, $2, $3) RETURNING {_CONVERSATION_COLUMNS}",
        admin_id,
        assistant_id,
        title,
    )
    return Conversation(**row)


async def add_message(db, conversation_id: uuid.UUID, role: str, content: Any) -> Message:
    """Append a message to a conversation and mark the conversation updated."""
    row = await db.fetchrow(
        f"""
        WITH touched AS (UPDATE conversations SET updated_at = now() WHERE id = $1)
        INSERT INTO messages (conversation_id, role, content) VALUES ($1, $2, $3)
        RETURNING {_MESSAGE_COLUMNS}
        """,
        conversation_id,
        role,
        content,
    )
    return Message(**row)


async def messages(db, conversation_id: uuid.UUID) -> list[Message]:
    """The messages of a conversation, oldest first."""
    rows = await db.fetch(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 ORDER BY id", conversation_id
    )
    return [Message(**row) for row in rows]
