"""Portability routes: an owner asks for a transfer, the recipient fetches the bundle once, an owner imports one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from carvault.access.portability import BUNDLE_ID_CHARS, Portability, Recipient, bundle_json
from carvault.errors import (
    AlreadyExists,
    BundleRejected,
    BundleUnreadable,
    Conflict,
    CrossBorderTransfer,
    DataFrozen,
    GatekeeperRefused,
    ImportCodeInvalid,
    InvalidQuery,
    NotFound,
    OriginNotTrusted,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from carvault.ingest.importer import Importer, import_file_bytes
from carvault.region import Region
from carvault.verify.container import MAX_TOTAL_BYTES
from carvault.web.deps import Caller, CurrentOwner, RegionDep, binary_body, header_parameter, read_body
from carvault.web.errors import raises

router = APIRouter(prefix="/api/v1", tags=["portability"])

ZIP_MEDIA_TYPE = "application/zip"
IMPORT_CODE_HEADER = "CarVault-Import-Code"
CHUNK = 1024 * 1024


class BundleIdConvertor(Convertor[str]):
    """A bundle id in a path: 24 URL-safe characters, so that ``/portability/import`` is never taken for one."""

    regex = f"[A-Za-z0-9_-]{{{BUNDLE_ID_CHARS}}}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("portability_bundle", BundleIdConvertor())


class RecipientIn(BaseModel):
    """The processor that receives the copy."""

    name: str = Field(min_length=1, max_length=200)
    legal_entity: str = Field(min_length=1, max_length=200)
    jurisdiction: str = Field(min_length=1, max_length=16, description="the region where it processes data")
    gatekeeper: bool = Field(False, description="a designated gatekeeper (EU Data Act Art. 5(3)) is refused")


class TransferRequest(BaseModel):
    """A portability transfer: to whom, and whether camera, biometric and cabin batches go too."""

    recipient: RecipientIn
    include_sensitive: bool = Field(
        False, description="include batches with camera, biometric or cabin data (otherwise left out and listed)"
    )


@router.post(
    "/vehicles/{vin}/portability",
    status_code=201,
    summary="Transfer a full copy of my vehicle's data to a processor I name (one-time fetch token, shown once)",
    responses=raises(NotFound, CrossBorderTransfer, GatekeeperRefused, DataFrozen, InvalidQuery),
)
def request_transfer(vin: str, req: TransferRequest, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    r = req.recipient
    row, token, import_code = Portability(region).request(
        owner.owner_id,
        vin,
        Recipient(r.name, r.legal_entity, r.jurisdiction, r.gatekeeper),
        include_sensitive=req.include_sensitive,
    )
    return {**bundle_json(row), "token": token, "import_code": import_code}


@router.get("/vehicles/{vin}/portability", summary="My portability bundles of a vehicle")
def list_transfers(vin: str, owner: CurrentOwner, region: RegionDep) -> list[dict[str, Any]]:
    return [bundle_json(b) for b in Portability(region).of_owner(owner.owner_id, vin)]


@router.get(
    "/portability/{bundle_id:portability_bundle}",
    summary="Fetch a portability bundle (once, with its one-time token)",
    response_class=StreamingResponse,
    responses={200: {"content": {ZIP_MEDIA_TYPE: {}}}, **raises(NotFound, Conflict, DataFrozen)},
)
def fetch_bundle(bundle_id: str, caller: Caller, region: RegionDep) -> StreamingResponse:
    service = Portability(region)
    bundle, path = service.start_fetch(caller, bundle_id)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the stream below
    except OSError:
        service.finish_fetch(bundle, complete=False, caller=caller)
        raise NotFound("the bundle file is gone; ask the owner for a new transfer") from None

    async def stream() -> AsyncIterator[bytes]:
        complete = False
        try:
            while chunk := await run_in_threadpool(f.read, CHUNK):
                yield chunk
            complete = True  # the server asked for more after sending the last chunk: all of it went out
        finally:
            f.close()
            service.finish_fetch(bundle, complete=complete, caller=caller)

    return StreamingResponse(
        stream(),
        media_type=ZIP_MEDIA_TYPE,
        headers={
            "Content-Disposition": f'attachment; filename="carvault-portability-{bundle.vin}-{bundle.id}.zip"',
            "Content-Length": str(bundle.size),
            "Cache-Control": "no-store",
        },
    )


@router.post(
    "/portability/import",
    status_code=201,
    summary="Import a portability bundle from another deployment (re-verified; all or nothing)",
    openapi_extra={
        **binary_body(ZIP_MEDIA_TYPE, "a portability bundle ZIP as fetched from the origin region"),
        "parameters": [
            header_parameter(
                IMPORT_CODE_HEADER,
                "the one-time import code the origin showed the owner with the transfer (proof of ownership)",
                {"type": "string", "minLength": 1, "maxLength": 200},
            )
        ],
    },
    responses=raises(
        BundleUnreadable,
        BundleRejected,
        ImportCodeInvalid,
        OriginNotTrusted,
        AlreadyExists,
        NotFound,
        PayloadTooLarge,
        UnsupportedMediaType,
    ),
)
async def import_bundle(request: Request, owner: CurrentOwner, region: RegionDep) -> dict[str, Any]:
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media != ZIP_MEDIA_TYPE:
        raise UnsupportedMediaType(f"send the bundle as {ZIP_MEDIA_TYPE}", expected=ZIP_MEDIA_TYPE)
    code = request.headers.get(IMPORT_CODE_HEADER, "")
    body = await read_body(request, MAX_TOTAL_BYTES, "bundle")
    return await run_in_threadpool(_import, region, body, owner.owner_id, code)


def _import(region: Region, body: bytes, owner_id: int, code: str) -> dict[str, Any]:
    path = import_file_bytes(body, region.settings.data_dir / "imports" / "incoming")
    try:
        importer = Importer(region.settings, region.db, region.segments, region.log, region.catalogue)
        result = importer.import_bundle(path, owner_id=owner_id, import_code=code)
    finally:
        path.unlink(missing_ok=True)
    region.audit.by_owner(
        owner_id,
        "portability.import",
        vin=result.vin,
        detail={k: v for k, v in result.as_json().items() if k != "checks"},
    )
    return result.as_json()
