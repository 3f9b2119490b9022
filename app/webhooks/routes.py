"""Webhook routes: endpoints of the caller's tenant, secret rotation, the delivery log, redelivery."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from app.api.deps import SessionDep, SettingsDep, TenantDep
from app.api.problems import problems
from app.models import WebhookEndpoint
from app.webhooks import service
from app.webhooks.schemas import (
    DeliveryList,
    DeliveryOut,
    DeliveryStatus,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookOut,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def _endpoint(db: SessionDep, tenant: TenantDep,
              webhook_id: Annotated[str, Path(max_length=64)]) -> WebhookEndpoint:
    return service.get_endpoint(db=db, tenant=tenant, endpoint_id=webhook_id)


EndpointDep = Annotated[WebhookEndpoint, Depends(_endpoint)]


@router.post("", status_code=201, response_model=WebhookCreated, responses=problems(401, 422))
def create_webhook(body: WebhookCreate, db: SessionDep, tenant: TenantDep, settings: SettingsDep) -> WebhookCreated:
    """Add a receiver for job events; the response carries its signing secret, shown only here."""
    endpoint = service.create_endpoint(db=db, tenant=tenant, url=body.url, event_types=list(body.event_types),
                                       settings=settings)
    return WebhookCreated.model_validate(endpoint)


@router.get("", response_model=WebhookList, responses=problems(401))
def list_webhooks(db: SessionDep, tenant: TenantDep) -> WebhookList:
    """List the caller's webhook endpoints (without secrets)."""
    return WebhookList(data=[WebhookOut.model_validate(e) for e in service.list_endpoints(db=db, tenant=tenant)])


@router.get("/{webhook_id}", response_model=WebhookOut, responses=problems(401, 404))
def get_webhook(endpoint: EndpointDep) -> WebhookOut:
    """Return one webhook endpoint (without its secret)."""
    return WebhookOut.model_validate(endpoint)


@router.delete("/{webhook_id}", status_code=204, responses=problems(401, 404))
def delete_webhook(endpoint: EndpointDep, db: SessionDep) -> Response:
    """Delete an endpoint and its delivery log; pending deliveries are not sent."""
    service.delete_endpoint(db=db, endpoint=endpoint)
    return Response(status_code=204)


@router.post("/{webhook_id}/rotate", response_model=WebhookCreated, responses=problems(401, 404))
def rotate_webhook_secret(endpoint: EndpointDep, db: SessionDep) -> WebhookCreated:
    """Replace the signing secret; the new one is shown only in this response."""
    return WebhookCreated.model_validate(service.rotate_secret(db=db, endpoint=endpoint))


@router.get("/{webhook_id}/deliveries", response_model=DeliveryList, responses=problems(401, 404, 422))
def list_webhook_deliveries(endpoint: EndpointDep, db: SessionDep,
                            limit: Annotated[int, Query(ge=1, le=100)] = 20,
                            status: DeliveryStatus | None = None) -> DeliveryList:
    """The delivery log, newest first: each event's status and every attempt's status code or error."""
    rows, has_more = service.list_deliveries(db=db, endpoint=endpoint, limit=limit, status=status)
    return DeliveryList(data=[DeliveryOut.model_validate(d) for d in rows], has_more=has_more)


@router.post("/{webhook_id}/deliveries/{delivery_id}/redeliver", status_code=202, response_model=DeliveryOut,
             responses=problems(401, 404))
def redeliver_webhook(endpoint: EndpointDep, db: SessionDep, settings: SettingsDep,
                      delivery_id: Annotated[str, Path(max_length=64)]) -> DeliveryOut:
    """Send a delivery again now, with the same webhook-id and body and a fresh retry horizon."""
    return DeliveryOut.model_validate(service.redeliver(db=db, endpoint=endpoint, delivery_id=delivery_id,
                                                        settings=settings))
