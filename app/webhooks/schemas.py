"""HTTP models of webhook endpoints and their delivery log."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal["job.started", "job.succeeded", "job.failed", "job.cancelled", "job.task_milestone"]
DeliveryStatus = Literal["pending", "succeeded", "failed"]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000, description="http(s) URL of a public receiver")
    event_types: list[EventType] = Field(min_length=1, max_length=5, description="events to send")


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    event_types: list[EventType]
    created_at: datetime
    secret_rotated_at: datetime | None


class WebhookCreated(WebhookOut):
    secret: str = Field(description="`whsec_` + base64 key to verify signatures; shown only in this response")


class WebhookList(BaseModel):
    data: list[WebhookOut]


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    started_at: datetime
    finished_at: datetime
    status_code: int | None = Field(description="the receiver's HTTP status; null when none came back")
    error: str | None


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="the `webhook-id` header: the same on every attempt and redelivery")
    event_type: EventType
    job_id: str | None
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[AttemptOut]


class DeliveryList(BaseModel):
    data: list[DeliveryOut]
    has_more: bool
