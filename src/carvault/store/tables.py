"""Tables of the metadata schema that belong to one service each: export jobs and the camera-frame index.

They share ``Base`` with ``store.metadata``, which imports this module, so ``Database.create_schema``
creates them with the rest; the services (``access.jobs``, ``ingest.frames``) only use them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from carvault.store.metadata import Base, now_ms


class ExportJob(Base):
    """One export an owner asked for: what, how far it got, and where the file is."""

    __tablename__ = "export_jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id"), index=True)
    vin: Mapped[str] = mapped_column(String(17), index=True)
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    whole_history: Mapped[bool] = mapped_column(default=False)
    format: Mapped[str] = mapped_column(String(16))
    signals: Mapped[str] = mapped_column(Text, default="")  # the owner's selectors; "" = all
    resample_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Set when a grant holder asked for it: the job is built, listed and served within that grant (grants.py).
    grant_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    file_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_until_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    started_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    expires_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class FrameRecord(Base):
    """One frame named by an accepted media batch: which batch, what the car said of it, and whether it arrived."""

    __tablename__ = "camera_frames"
    __table_args__ = (UniqueConstraint("vin", "sha256", name="uq_camera_frames_vin_sha256"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(ForeignKey("vehicles.vin"), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    batch_hash: Mapped[str] = mapped_column(String(64))
    t_ms: Mapped[int] = mapped_column(BigInteger)
    position: Mapped[str | None] = mapped_column(String(16), nullable=True)
    deidentified: Mapped[bool] = mapped_column(Boolean)
    redactions: Mapped[str] = mapped_column(Text, default="[]")
    detectors: Mapped[str] = mapped_column(Text, default="[]")
    size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    stored_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class FrameScan(Base):
    """How far a vehicle's media batches have been read into ``camera_frames``."""

    __tablename__ = "camera_frame_scans"
    vin: Mapped[str] = mapped_column(ForeignKey("vehicles.vin"), primary_key=True)
    scanned_seq: Mapped[int] = mapped_column(BigInteger, default=0)
