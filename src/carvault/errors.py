"""The CarVault error hierarchy: every refusal has a stable machine code, an HTTP status and a message.

    CarVaultError                      500 internal_error
    ├── BadRequest                     400 bad_request
    │   ├── MalformedBatch             400 malformed_batch       (framing, Parquet, header JSON)
    │   ├── MalformedFrame             400 malformed_frame       (a live frame's bytes, §8 of protocol.md)
    │   ├── MalformedFleetRecord       400 malformed_fleet_record (a Fleet Telemetry envelope or record)
    │   ├── UnknownFleetField          400 unknown_fleet_field   (a Fleet Telemetry field with no catalogue signal)
    │   ├── LiveRootMismatch           400 live_root_mismatch    (batch live_root vs the frames received)
    │   ├── UnknownSignal              400 unknown_signal
    │   ├── WrongSignalType            400 wrong_signal_type
    │   ├── ValueOutOfRange            400 value_out_of_range    (also non-finite values)
    │   ├── TimestampOutOfSpan         400 timestamp_out_of_span (outside the header span, unordered)
    │   ├── TimestampInFuture          400 timestamp_in_future
    │   ├── DeIdentificationMissing    422 deidentification_missing (camera frame not blurred in the car)
    │   ├── RegionMismatch             400 region_mismatch       (header region is not the registered home)
    │   ├── InvalidQuery               400 invalid_query
    │   │   ├── WindowReversed         400 window_reversed       (a time window that ends before it starts)
    │   │   ├── WindowEmpty            400 window_empty          (a time window that ends when it starts)
    │   │   └── WindowTooLong          400 window_too_long       (a time window longer than its limit)
    │   ├── BundleUnreadable           400 bundle_unreadable     (not a readable portability bundle ZIP)
    │   ├── BundleRejected             422 bundle_rejected       (a portability bundle fails verification)
    │   └── ValidationFailed           422 validation_failed     (request body/params fail the schema)
    ├── Unauthenticated                401 unauthenticated
    │   ├── BadSignature               401 bad_signature
    │   ├── FleetVinMismatch           401 fleet_vin_mismatch    (a record for another car than the certificate's)
    │   └── UnknownVehicle             401 unknown_vehicle
    ├── Forbidden                      403 forbidden
    │   ├── DataFrozen                 403 data_frozen           (legal hold after a deletion request)
    │   ├── RecordRetained             403 record_retained       (a processing record within its 3 years)
    │   ├── RoleForbidden              403 role_forbidden        (a staff role without the route's permission)
    │   ├── TransferCapReached         403 transfer_cap_reached  (one more person abroad passes the route's cover)
    │   ├── CaseInactive               403 case_inactive         (a case closed, ended, or not approved by the owner)
    │   └── ConsentNotGiven            403 consent_not_given     (a routine batch carries data not consented)
    │       └── LocationInMaskedPlace  403 location_in_masked_place (a position inside an owner's masked place)
    ├── NotFound                       404 not_found
    │   └── PlaceNotFound              404 place_not_found       (no such place among the owner's own)
    ├── MethodNotAllowed               405 method_not_allowed    (answered with the Allow header)
    ├── Conflict                       409 conflict
    │   ├── SeqConflict                409 seq_conflict          (a different batch with a used seq)
    │   ├── RetentionRunning           409 retention_running     (another replica's purge holds the lease)
    │   ├── BrokenChain                409 broken_chain          (prev hash or seq does not follow)
    │   ├── AlreadyExists              409 already_exists
    │   ├── TooManyPlaces              409 too_many_places       (an owner may name at most 50 places)
    │   ├── TariffOverlap              409 tariff_overlap        (two charging tariffs would price the same minute)
    │   ├── DeletionNotCancellable     409 deletion_not_cancellable (its grace period is over: erasure started)
    │   └── ReportFinalised            409 report_already_finalised (an annual report already filed for that year)
    ├── PayloadTooLarge                413 payload_too_large
    ├── UnsupportedMediaType           415 unsupported_media_type
    ├── WrongRegion                    421 wrong_region          (carries the home region and endpoint)
    ├── TooManyRequests                429 too_many_requests
    └── Unavailable                    503 unavailable
        └── FontMissing                503 font_missing          (the CJK font the report PDF needs)

The web layer maps every ``CarVaultError`` to ``{"error": {"code", "message", ...details}}`` in one
handler (``carvault.web.errors``); the CLI prints the message and exits non-zero.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CarVaultError(Exception):
    """Base of every error CarVault raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        """The JSON body sent to clients."""
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class BadRequest(CarVaultError):
    """The request cannot be understood as sent."""

    code = "bad_request"
    status = 400


class MalformedBatch(BadRequest):
    """The batch envelope, its header or its columnar payload cannot be decoded."""

    code = "malformed_batch"


class MalformedFrame(BadRequest):
    """A live frame (docs/protocol.md §8) cannot be decoded, or is not in its one canonical form."""

    code = "malformed_frame"


class MalformedFleetRecord(BadRequest):
    """A Fleet Telemetry message (its FlatBuffers envelope or protobuf record) cannot be decoded."""

    code = "malformed_fleet_record"


class UnknownFleetField(BadRequest):
    """A Fleet Telemetry record names a field that is not in Tesla's list or that no catalogue signal carries."""

    code = "unknown_fleet_field"


class LiveRootMismatch(BadRequest):
    """A batch's live_root differs from the Merkle root of the live frames the region received for its range."""

    code = "live_root_mismatch"


class UnknownSignal(BadRequest):
    """A column names a signal that is not in the catalogue (unclassified data is refused)."""

    code = "unknown_signal"


class WrongSignalType(BadRequest):
    """A column's type is not the catalogue's datatype for that signal."""

    code = "wrong_signal_type"


class ValueOutOfRange(BadRequest):
    """A value lies outside the signal's allowed range, is not finite, or not an allowed enum value."""

    code = "value_out_of_range"


class TimestampOutOfSpan(BadRequest):
    """A record's timestamp is outside the span the header declares, or timestamps are not increasing.

    Also a header span that starts before 2000 or is empty (``t1 < t0``).
    """

    code = "timestamp_out_of_span"


class TimestampInFuture(BadRequest):
    """The batch claims data from further in the future than clock skew allows (or after 9999-12-31)."""

    code = "timestamp_in_future"


class DeIdentificationMissing(BadRequest):
    """An exterior camera frame is not marked as de-identified (faces, plates blurred) by the agent."""

    code = "deidentification_missing"
    status = 422


class RegionMismatch(BadRequest):
    """The batch header names a region other than the vehicle's registered home region."""

    code = "region_mismatch"


class InvalidQuery(BadRequest):
    """Query parameters are inconsistent (window, signals, format, resampling)."""

    code = "invalid_query"


class WindowReversed(InvalidQuery):
    """A time window whose end comes before its start (carvault.windows)."""

    code = "window_reversed"


class WindowEmpty(InvalidQuery):
    """A time window whose end is its start: nothing to serve (carvault.windows)."""

    code = "window_empty"


class WindowTooLong(InvalidQuery):
    """A time window longer than the limit of the place that takes it (carvault.windows)."""

    code = "window_too_long"


class BundleUnreadable(BadRequest):
    """A portability bundle cannot be read: not a ZIP within the container limits, or no valid manifest."""

    code = "bundle_unreadable"


class BundleRejected(BadRequest):
    """A portability bundle fails a verification check; the whole bundle is refused and nothing is stored."""

    code = "bundle_rejected"
    status = 422


class ValidationFailed(BadRequest):
    """A request body or parameter does not match the API schema."""

    code = "validation_failed"
    status = 422


class Unauthenticated(CarVaultError):
    """No valid credentials came with the request."""

    code = "unauthenticated"
    status = 401


class BadSignature(Unauthenticated):
    """The batch signature does not verify against the vehicle's registered key."""

    code = "bad_signature"


class FleetVinMismatch(Unauthenticated):
    """A Fleet Telemetry record names another VIN than the vehicle certificate of its connection."""

    code = "fleet_vin_mismatch"


class UnknownVehicle(Unauthenticated):
    """The VIN is not provisioned in this region."""

    code = "unknown_vehicle"


class Forbidden(CarVaultError):
    """Authenticated, but not allowed to do this."""

    code = "forbidden"
    status = 403


class DataFrozen(Forbidden):
    """The data is under a legal hold after a deletion request: kept, but not served."""

    code = "data_frozen"


class RecordRetained(Forbidden):
    """A processing record may not be deleted yet: records are kept three years after they end (NDSMR Art. 12)."""

    code = "record_retained"


class ConsentNotGiven(Forbidden):
    """A batch carries samples of a category the owner had not consented to (or had stopped) at their time."""

    code = "consent_not_given"


class LocationInMaskedPlace(ConsentNotGiven):
    """A batch or live frame carries a position inside a place the owner masks in the car (access/places.py)."""

    code = "location_in_masked_place"


class RoleForbidden(Forbidden):
    """The staff member's role does not carry the permission this operator route needs (compliance/roles.py)."""

    code = "role_forbidden"


class CaseInactive(Forbidden):
    """A read under a case that is closed, past its end date, or a support ticket the owner has not approved."""

    code = "case_inactive"


class OutOfScope(Forbidden):
    """The request reaches beyond the grant (signal, vehicle, window, live or precision)."""

    code = "out_of_scope"


class OwnerOnly(Forbidden):
    """Only the owner (session or full token) may use this route; grant tokens may not."""

    code = "owner_only"


class ImportCodeInvalid(Forbidden):
    """A portability import without the owner's import code, or with a wrong one (docs/portability.md §1.3)."""

    code = "import_code_invalid"


class OriginNotTrusted(Forbidden):
    """A portability import as an owner from a deployment whose keys this one was not given (no trust document)."""

    code = "origin_not_trusted"


class NotShareable(Forbidden):
    """Camera frames, biometrics and cabin data are never shared through grants."""

    code = "not_shareable"


class GatekeeperRefused(Forbidden):
    """The recipient is a designated gatekeeper (EU Data Act Art. 5(3))."""

    code = "gatekeeper_refused"


class CrossBorderTransfer(Forbidden):
    """The recipient is outside the data's region (a cross-border transfer) and no transfer record covers it."""

    code = "cross_border_transfer"


class TransferCapReached(CrossBorderTransfer):
    """A transfer record covers the recipient, but one more person this year passes what its route or scale covers."""

    code = "transfer_cap_reached"


class AppNotApproved(Forbidden):
    """The app is not (or no longer) approved by the operator."""

    code = "app_not_approved"


class NotFound(CarVaultError):
    """The thing does not exist, or the caller may not know that it does."""

    code = "not_found"
    status = 404


class PlaceNotFound(NotFound):
    """No place with that id among the owner's own places."""

    code = "place_not_found"


class TileNotFound(NotFound):
    """No such tile of the log: malformed path, beyond the published tree, or not (yet) published."""

    code = "tile_not_found"


class LogEntriesNotPublished(NotFound):
    """The log publishes hash tiles only, not entry bundles (docs/transparency-log.md)."""

    code = "log_entries_not_published"


class MethodNotAllowed(CarVaultError):
    """The path exists but does not take this method; the answer's ``Allow`` header lists the ones it takes."""

    code = "method_not_allowed"
    status = 405


class Conflict(CarVaultError):
    """The request conflicts with stored state."""

    code = "conflict"
    status = 409


class RetentionRunning(Conflict):
    """A retention purge is already running (on this or another replica); one runs at a time."""

    code = "retention_running"


class SeqConflict(Conflict):
    """A different batch was already accepted with this sequence number."""

    code = "seq_conflict"


class BrokenChain(Conflict):
    """The batch does not continue the vehicle's hash chain (wrong prev hash, or a gap before it)."""

    code = "broken_chain"


class AlreadyExists(Conflict):
    """A unique thing (email, VIN claim) already exists."""

    code = "already_exists"


class TooManyPlaces(Conflict):
    """The owner has named as many places as one account may keep (access/places.py ``MAX_PLACES``)."""

    code = "too_many_places"


class ReportFinalised(Conflict):
    """The annual report of that year was already finalised; a filed report is never replaced."""

    code = "report_already_finalised"


class DeletionNotCancellable(Conflict):
    """A deletion request can be cancelled only during its grace period; this one has started, ended or was
    cancelled already."""

    code = "deletion_not_cancellable"


class TariffOverlap(Conflict):
    """A charging tariff would price a minute another of the owner's tariffs for the same place already prices."""

    code = "tariff_overlap"


class PayloadTooLarge(CarVaultError):
    """The request body exceeds the configured limit."""

    code = "payload_too_large"
    status = 413


class UnsupportedMediaType(CarVaultError):
    """The request's Content-Type is not one this endpoint takes."""

    code = "unsupported_media_type"
    status = 415


class WrongRegion(CarVaultError):
    """The vehicle belongs to another region; its data is neither accepted nor stored here."""

    code = "wrong_region"
    status = 421


class TooManyRequests(CarVaultError):
    """Rate limit reached; retry later."""

    code = "too_many_requests"
    status = 429


class Unavailable(CarVaultError):
    """A backing store is unavailable or misconfigured."""

    code = "unavailable"
    status = 503


class FontMissing(Unavailable):
    """The font a PDF needs (WenQuanYi Micro Hei for Chinese) is not installed (scripts/install-system-deps.sh)."""

    code = "font_missing"


def all_error_classes() -> list[type[CarVaultError]]:
    """Every error class, for documentation and the test that each code is unique."""
    seen: list[type[CarVaultError]] = []
    stack: list[type[CarVaultError]] = [CarVaultError]
    while stack:
        cls = stack.pop()
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen
