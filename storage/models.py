"""Every table of a library, in one place. SQLite is the source of truth, vectors included."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Small key/value facts about the library (e.g. the vector generation counter)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Spec(Base):
    """The embedding spec the library is bound to; every vector row points at it."""

    __tablename__ = "specs"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String, unique=True)
    model_id: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(Text)
    dim: Mapped[int]
    spec_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class Content(Base):
    """One distinct file content (by sha256): identical copies share it and are embedded once."""

    __tablename__ = "contents"
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    width: Mapped[int]
    height: Mapped[int]
    format: Mapped[str | None] = mapped_column(String)
    taken_at: Mapped[str | None] = mapped_column(String)
    camera_make: Mapped[str | None] = mapped_column(String)
    camera_model: Mapped[str | None] = mapped_column(String)


class Vector(Base):
    """A float32 L2-normalised vector of one content, for one feature of one spec."""

    __tablename__ = "vectors"
    content_id: Mapped[int] = mapped_column(
        ForeignKey("contents.id", ondelete="CASCADE"), primary_key=True
    )
    spec_id: Mapped[int] = mapped_column(ForeignKey("specs.id"), primary_key=True)
    feature: Mapped[str] = mapped_column(String, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Image(Base):
    """A path in the library. Its id is its FAISS id: a move keeps it, a change bumps generation."""

    __tablename__ = "images"
    # AUTOINCREMENT: a removed image's id (its FAISS id) is never handed to another image.
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    size: Mapped[int]
    mtime_ns: Mapped[int]
    content_id: Mapped[int] = mapped_column(ForeignKey("contents.id"), index=True)
    generation: Mapped[int] = mapped_column(index=True)
    added_at: Mapped[datetime]


class Failure(Base):
    """A file that could not be read, with why; retried only when it changes."""

    __tablename__ = "failures"
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    size: Mapped[int]
    mtime_ns: Mapped[int]
    error: Mapped[str] = mapped_column(Text)
    failed_at: Mapped[datetime]


class Probe(Base):
    """A saved linear probe: weights as raw float32 bytes (never pickle), bound to the spec."""

    __tablename__ = "probes"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    spec_id: Mapped[int] = mapped_column(ForeignKey("specs.id"))
    spec_key: Mapped[str] = mapped_column(String)
    feature: Mapped[str] = mapped_column(String)
    classes_json: Mapped[str] = mapped_column(Text)
    dim: Mapped[int]
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    bias: Mapped[bytes] = mapped_column(LargeBinary)
    metrics_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class Prediction(Base):
    """A probe's stored label for an image (from `probe predict --all`)."""

    __tablename__ = "predictions"
    probe_id: Mapped[int] = mapped_column(
        ForeignKey("probes.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    label: Mapped[str] = mapped_column(String)
    score: Mapped[float]


Index("ix_predictions_label", Prediction.probe_id, Prediction.label)
